#!/usr/bin/env bash
# Set up from nothing but Python, then run every check CI runs: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
bash scripts/install-tools.sh .venv/bin/python
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
pytest "$@"
