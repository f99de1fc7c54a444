#!/usr/bin/env bash
# Set up from nothing but Python, then run every check CI runs: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
bash scripts/install-tools.sh .venv/bin/python
# As root (CI), a Docker daemon and the base image, so that tests/deploy/test_image.py builds
# the image and runs it; then a missing daemon fails those tests instead of skipping them.
# JOULETUNE_REQUIRE_DOCKER=0 leaves Docker out.
if [ "$(id -u)" = 0 ] && [ "${JOULETUNE_REQUIRE_DOCKER:-1}" != 0 ]; then
  bash scripts/docker-setup.sh
  export JOULETUNE_REQUIRE_DOCKER=1
fi
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
pytest "$@"
