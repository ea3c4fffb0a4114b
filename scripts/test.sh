#!/usr/bin/env bash
# The README's test command: set everything up (idempotent), then run the whole suite: the engine tests once
# and the host suite against every ComfyUI host (scripts/run_tests.py; its last lines count each phase).
# With arguments, they go to one plain pytest run against the current host, e.g. tests/unit/test_planner.py.
# tests/gpu skips itself without CUDA; on the device machine it runs for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  exec .venv/bin/python scripts/run_tests.py
fi
exec .venv/bin/python -m pytest "$@"
