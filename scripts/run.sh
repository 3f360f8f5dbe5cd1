#!/usr/bin/env bash
# Sets up what is missing, then runs the service on its embedded SeaweedFS (or the configured
# S3 endpoint). Extra arguments go to `blockstore serve` (e.g. --home DIR --port N).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/blockstore serve "$@"
