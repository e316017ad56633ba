"""The bottom layer: typed errors, size limits, atomic and bounded file I/O, redaction. Imports nothing of amips."""
