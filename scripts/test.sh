#!/usr/bin/env bash
# Set up, lint (and, once configured, type-check), then run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow" for the quick loop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
