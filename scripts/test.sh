#!/usr/bin/env bash
# The README's test command: set everything up (idempotent), then run the whole suite.
# tests/gpu skips itself without CUDA; on the device machine it runs for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- tests; fi
exec .venv/bin/python -m pytest "$@"
