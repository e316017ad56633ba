"""Benchmarks: commands that print tables and plots, run from the repository root as `python -m bench.NAME`."""
