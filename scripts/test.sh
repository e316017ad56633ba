#!/usr/bin/env bash
# Set up, lint (ruff), type-check the library (mypy), then run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow" for the quick loop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/typecheck.sh
exec .venv/bin/python -m pytest -q "$@"
