#!/usr/bin/env bash
# The README's main job: set everything up (idempotent), then run the bundled workflow in a real,
# headless ComfyUI through our nodes and print what ran where.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
