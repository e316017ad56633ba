#!/usr/bin/env bash
# Type-check the library with mypy (configuration: [tool.mypy] in pyproject.toml).
# core/, adapters/ and compression/ install as amips_plugin.core, .adapters and .compression (setuptools
# package-dir), a mapping mypy cannot read; so the installed layout is rebuilt as a tree of symbolic links
# under build/typecheck/ and mypy checks that, which makes every `import amips_plugin.adapters...` resolve
# to this checkout's files. Errors are reported under build/typecheck/amips_plugin/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/amips_plugin"
for entry in amips_plugin/*; do
  ln -s "$PWD/$entry" "$tree/amips_plugin/"
done
ln -s "$PWD/core" "$tree/amips_plugin/core"
ln -s "$PWD/adapters" "$tree/amips_plugin/adapters"
ln -s "$PWD/compression" "$tree/amips_plugin/compression"
exec "$PYTHON" -m mypy "$@" "$tree/amips_plugin"
