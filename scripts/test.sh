#!/usr/bin/env bash
# Sets up what is missing, then runs the whole test suite: ruff, mypy, pytest.
# The tests start their own SeaweedFS and nbdkit processes on loopback and stop them.
# Extra arguments go to pytest (e.g. -k volume, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check blockstore api cli nbd_plugin bench tests
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q -m "not slow" "$@"
