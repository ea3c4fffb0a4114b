#!/usr/bin/env bash
# Everything the GPU machine runs, in one script, so a single call can batch several parts.
#
#   bash tests/gpu/run_on_device.sh [PART...]
#
# PARTs (run in the order given; default: tests bench):
#   inventory  python/torch/GPU facts, which of ComfyUI's in-process packages are missing, host RAM/disk,
#              and the pinned host->GPU bandwidth (bench/h2d_bandwidth.py)
#   models     synthesize the full-size Flux.1-dev-shaped bf16 model into $MODELS_DIR (skipped when present;
#              SYNTH_SET=full writes the whole "full" set with scripts/synth_models.py, SDXL included)
#   tests      python -m pytest tests/gpu -q (the GPU tests skip themselves without CUDA)
#   bench      models, then bench/bench_flux_stream.py (full size; BENCH_ARGS adds arguments)
#   smoke      bench/bench_flux_stream.py --tiny on the GPU (tiny Flux, written on the fly): a quick
#              end-to-end check of the harness and the engine on CUDA
#   both       tests bench
#   memkinds   bench/h2d_memory_kinds.py: GB/s of block-sized copies from each kind of page-locked memory
#   quant      bench/quant_dequant.py: GGUF dequantization speed per type, torch and Triton paths
#              (QUANT_ARGS adds arguments, e.g. "--types Q8_0,Q4_K --rows-per-program 32,64,128 --num-warps 4,8")
#   compare    the Flux model, then bench/compare_hosts.py: ours vs core on ComfyUI 0.33.0 (Dynamic VRAM) and
#              0.3.75 at 16 and 6 GiB free, cfg 1 and 3.5 (COMPARE_ARGS adds arguments; ~6-8 min; run it
#              in a call of its own). compare.jsonl, compare.log
#   coexist    Flux + T5-XXL + CLIP-L + TAEF1, then tests/gpu/dynamic_vram_coexistence.py on a real ComfyUI
#              0.33.0 server (COEXIST_HOST, COEXIST_ARGS; ~4-5 min). coexist.jsonl, coexist_server.log
#
# ComfyUI trees: .host/comfyui-0.3.75 and .host/comfyui-0.33.0, unpacked from .gpu/hosts.tar.xz when absent.
# PyAV: when `import av` fails, tests/gpu/stubs (a stand-in whose imports all succeed) goes on PYTHONPATH.
#   gguf_tests the GGUF suites on CUDA: tests/gpu/test_gguf_cuda.py (tiny GGUF Flux streamed vs resident, pinned
#              RAM) and the in-process tests/host/test_gguf*.py (timeout GGUF_TESTS_TIMEOUT, default 540 s)
#   gguf_models  synthesize the Flux.1-dev-shaped Q8_0 and Q4_K GGUFs into $MODELS_DIR (12.7 + 6.7 GB, on cuda)
#   gguf_bench gguf_models (and the bf16 model), then bench/bench_gguf.py (GGUF_BENCH_ARGS adds arguments, e.g.
#              "--comfyui-gguf /tmp/ComfyUI-GGUF" for the ComfyUI-GGUF baseline cases; GGUF_BENCH_TIMEOUT, default
#              540 s). Run `gguf_models` in a call of its own first: writing the two models takes minutes.
#   gguf_smoke bench/bench_gguf.py --tiny on the GPU: the GGUF harness end to end on the tiny GGUF Flux
#   soak       tests/host/test_soak.py on a real server of SOAK_HOST (default 0.33.0) running on the GPU: the long
#              run (DISTORCH_SOAK_PROMPTS, default 400, stopped after DISTORCH_SOAK_SECONDS, default 420; memory
#              measured every DISTORCH_SOAK_MEASURE_EVERY cycles, default 4; SOAK_TIMEOUT, default 560 s). soak.log
#
# Wheels: if .whl/ holds any (py3.12 manylinux wheels of packages the machine lacks), they are installed
# with --no-deps into /tmp/site first and put on PYTHONPATH. Results: JSON lines and logs under $OUT
# (the device tool's output folder) or ./.gpu/out when OUT is unset. Never asserts anything about speed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/.gpu/out}"
MODELS_DIR="${MODELS_DIR:-/tmp/models}"
COMFY_ROOT="${COMFY_ROOT:-$ROOT/.host/comfyui-0.3.75}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-300}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-420}"
COMPARE_DEADLINE="${COMPARE_DEADLINE:-450}"  # the driver skips cases that would start later
COMPARE_TIMEOUT="${COMPARE_TIMEOUT:-$((COMPARE_DEADLINE + 60))}"
COEXIST_TIMEOUT="${COEXIST_TIMEOUT:-450}"
COEXIST_HOST="${COEXIST_HOST:-0.33.0}"
export PYTHONUNBUFFERED=1 MODELS_DIR COMFY_ROOT
mkdir -p "$OUT"

log() { echo "== run_on_device: $*" | tee -a "$OUT/setup.log"; }

install_wheels() {
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -gt 0 ]; then
    local t0=$SECONDS
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${wheels[@]}" >>"$OUT/setup.log" 2>&1 || { log "wheel install FAILED"; return 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    log "installed ${#wheels[@]} wheels into /tmp/site in $((SECONDS - t0)) s"
  fi
}

ensure_hosts() {
  # Both ComfyUI trees; the lead carries them as one archive (.host is ignored by git, so it never travels).
  if [ -f .host/comfyui-0.3.75/main.py ] && [ -f .host/comfyui-0.33.0/main.py ]; then return 0; fi
  [ -f .gpu/hosts.tar.xz ] || { log "ComfyUI trees missing: no .host/comfyui-* and no .gpu/hosts.tar.xz"; return 1; }
  if [ -L .host ] && [ ! -e .host ]; then rm .host; fi  # a dangling link from a checkout elsewhere
  mkdir -p .host && tar -xJf .gpu/hosts.tar.xz -C .host || { log "unpacking .gpu/hosts.tar.xz FAILED"; return 1; }
  [ -f .host/comfyui-0.3.75/main.py ] && [ -f .host/comfyui-0.33.0/main.py ] ||
    { log "hosts.tar.xz holds no comfyui-0.3.75/ and comfyui-0.33.0/ at its top: $(ls .host | tr '\n' ' ')"; return 1; }
  log "unpacked $(ls -d .host/comfyui-* | tr '\n' ' ')"
}

stub_av_if_missing() {
  # ComfyUI imports PyAV in core modules; the machine lacks it and no graph here calls it.
  if ! "$PY" -c "import av" >/dev/null 2>&1; then
    export PYTHONPATH="$ROOT/tests/gpu/stubs${PYTHONPATH:+:$PYTHONPATH}"
    log "PyAV missing: tests/gpu/stubs/av on PYTHONPATH"
  fi
}

synth() {  # synth SET NAME...: write these models of a set into $MODELS_DIR (cached when present)
  [ "${SYNTH:-1}" = 0 ] && { log "SYNTH=0: models in $MODELS_DIR taken as present"; return 0; }
  local set=$1; shift
  local only=()
  for name in "$@"; do only+=(--only "$name"); done
  "$PY" scripts/synth_models.py --models-dir "$MODELS_DIR" --set "$set" "${only[@]}" --device cuda \
    --comfy-root "$COMFY_ROOT" 2>&1 | tee -a "$OUT/setup.log"
  return "${PIPESTATUS[0]}"
}

part_compare() {
  synth full flux1_dev_full || { log "no Flux model, no comparison"; return 1; }
  local t0=$SECONDS
  log "compare (deadline ${COMPARE_DEADLINE}s, timeout ${COMPARE_TIMEOUT}s) args: ${COMPARE_ARGS:-}"
  # JSON lines go to compare.jsonl; the console gets the tables only (the lines are long).
  # shellcheck disable=SC2086
  timeout "$COMPARE_TIMEOUT" "$PY" bench/compare_hosts.py --hosts-dir "$ROOT/.host" \
    --model "$MODELS_DIR/diffusion_models/distorch-flux1-dev-full.safetensors" --deadline "$COMPARE_DEADLINE" \
    --out "$OUT/compare.jsonl" --log "$OUT/compare.log" --work-dir /tmp/distorch-compare ${COMPARE_ARGS:-} \
    2>>"$OUT/compare.log" | grep -v '^{'
  local rc=${PIPESTATUS[0]}
  log "compare rc=$rc in $((SECONDS - t0)) s"
}

part_coexist() {
  synth full flux1_dev_full t5xxl_full && synth tiny clip_l taef1 || { log "models missing, no coexistence run"; return 1; }
  local t0=$SECONDS
  log "coexist on ComfyUI $COEXIST_HOST (timeout ${COEXIST_TIMEOUT}s) args: ${COEXIST_ARGS:-}"
  rm -rf /tmp/distorch-coexist
  # shellcheck disable=SC2086
  timeout "$COEXIST_TIMEOUT" "$PY" tests/gpu/dynamic_vram_coexistence.py --host "$COEXIST_HOST" \
    --hosts-dir "$ROOT/.host" --models-dir "$MODELS_DIR" --out "$OUT/coexist.jsonl" \
    --server-log "$OUT/coexist_server.log" --work-dir /tmp/distorch-coexist ${COEXIST_ARGS:-} \
    2>>"$OUT/setup.log" | grep -v '^{'
  local rc=${PIPESTATUS[0]}
  cat /tmp/distorch-coexist/occupier.log >>"$OUT/setup.log" 2>/dev/null
  log "coexist rc=$rc in $((SECONDS - t0)) s"
}

part_inventory() {
  log "inventory"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
      --format=csv 2>&1
    "$PY" -V
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md
names = ["numpy", "PIL:pillow", "safetensors", "psutil", "einops", "tqdm", "yaml:pyyaml", "scipy", "torchsde",
         "trampoline", "transformers", "tokenizers", "av", "torchvision", "pytest", "pytest_timeout:pytest-timeout",
         "hypothesis", "gguf", "aiohttp", "requests"]
missing = []
for n in names:
    mod, _, dist = n.partition(":")
    dist = dist or mod
    try:
        importlib.import_module(mod)
        print(f"  ok      {dist} {md.version(dist)}")
    except Exception as e:
        missing.append(dist)
        print(f"  MISSING {dist}: {type(e).__name__}: {e}")
print("missing:", " ".join(missing) or "none")
EOF
    free -g; df -h /tmp | tail -1; nproc
    "$PY" -c "import os; print('PYTORCH_CUDA_ALLOC_CONF', os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))"
  } 2>&1 | tee -a "$OUT/setup.log"
  "$PY" bench/h2d_bandwidth.py 2>&1 | tee -a "$OUT/setup.log"
}

part_models() {
  local t0=$SECONDS
  if [ "${SYNTH_SET:-flux}" = "full" ]; then
    "$PY" scripts/synth_models.py --models-dir "$MODELS_DIR" --set full --device cuda --comfy-root "$COMFY_ROOT" \
      2>&1 | tee -a "$OUT/setup.log"
  else
    # Only the Flux.1-dev-shaped model (the benchmark's), without the 7 GB SDXL checkpoint it does not use.
    "$PY" scripts/synth_models.py --models-dir "$MODELS_DIR" --set full --only flux1_dev_full --device cuda \
      --comfy-root "$COMFY_ROOT" 2>&1 | tee -a "$OUT/setup.log"
  fi
  local rc=$?
  log "models rc=$rc in $((SECONDS - t0)) s"
  return $rc
}

part_tests() {
  local t0=$SECONDS
  log "tests: pytest tests/gpu + in-process ComfyUI tests (test_streaming, test_in_process) on CUDA (timeout ${TESTS_TIMEOUT}s)"
  # The in-process ComfyUI streaming tests pick ComfyUI's device, so here they run on CUDA with a pinned arena.
  mkdir -p .host/base/custom_nodes && ln -sfn "$ROOT" .host/base/custom_nodes/comfyui-distorch
  timeout "$TESTS_TIMEOUT" "$PY" -m pytest tests/gpu tests/host/test_streaming.py tests/host/test_in_process.py -q -p no:cacheprovider \
    -W ignore::pytest.PytestConfigWarning 2>&1 | tee "$OUT/tests_gpu.log"
  local rc=$?
  log "tests rc=$rc in $((SECONDS - t0)) s"
}

part_bench() {
  part_models || { log "no model, no benchmark"; return 1; }
  local t0=$SECONDS
  log "bench (timeout ${BENCH_TIMEOUT}s) args: ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  timeout "$BENCH_TIMEOUT" "$PY" bench/bench_flux_stream.py --comfy-root "$COMFY_ROOT" \
    --model "$MODELS_DIR/diffusion_models/distorch-flux1-dev-full.safetensors" --out "$OUT/bench.jsonl" \
    ${BENCH_ARGS:-} 2>"$OUT/bench.log"
  local rc=$?
  log "bench rc=$rc in $((SECONDS - t0)) s"
  tail -40 "$OUT/bench.log" | grep -E "ERROR|Error|error|Traceback" | head -20
}

part_smoke() {
  local t0=$SECONDS
  log "smoke: tiny Flux on the GPU"
  "$PY" scripts/synth_models.py --models-dir "$MODELS_DIR" --set tiny --only flux_tiny --device cuda \
    --comfy-root "$COMFY_ROOT" 2>&1 | tee -a "$OUT/setup.log"
  # shellcheck disable=SC2086
  timeout 240 "$PY" bench/bench_flux_stream.py --tiny --comfy-root "$COMFY_ROOT" \
    --model "$MODELS_DIR/diffusion_models/distorch-tiny-flux.safetensors" --out "$OUT/smoke.jsonl" \
    ${SMOKE_ARGS:-} 2>"$OUT/smoke.log"
  log "smoke rc=$? in $((SECONDS - t0)) s"
}

part_memkinds() {
  log "memkinds: page-locked memory kinds at block size"
  "$PY" bench/h2d_memory_kinds.py 2>&1 | tee "$OUT/memkinds.jsonl"
}

part_quant() {
  log "quant: dequantization speed per GGML type"
  # shellcheck disable=SC2086
  timeout "$BENCH_TIMEOUT" "$PY" bench/quant_dequant.py ${QUANT_ARGS:-} 2>"$OUT/quant_dequant.log" | tee "$OUT/quant_dequant.jsonl"
  log "quant rc=${PIPESTATUS[0]}"
}

part_gguf_tests() {
  local t0=$SECONDS
  log "gguf_tests: GGUF on CUDA (timeout ${GGUF_TESTS_TIMEOUT:-540}s)"
  timeout "${GGUF_TESTS_TIMEOUT:-540}" "$PY" -m pytest tests/gpu/test_gguf_cuda.py tests/host/test_gguf.py \
    tests/host/test_gguf_text.py tests/host/test_gguf_ops.py -q -p no:cacheprovider \
    -W ignore::pytest.PytestConfigWarning 2>&1 | tee "$OUT/tests_gguf.log"
  log "gguf_tests rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

part_gguf_models() {
  local t0=$SECONDS
  "$PY" scripts/synth_models.py --models-dir "$MODELS_DIR" --set full --only flux1_dev_q8_0_full \
    --only flux1_dev_q4_k_full --device cuda --comfy-root "$COMFY_ROOT" 2>&1 | tee -a "$OUT/setup.log"
  local rc=${PIPESTATUS[0]}
  log "gguf_models rc=$rc in $((SECONDS - t0)) s"
  return $rc
}

part_gguf_bench() {
  part_gguf_models || { log "no GGUF models, no benchmark"; return 1; }
  part_models || log "no bf16 model: bench_gguf runs without the bf16 reference step"
  local t0=$SECONDS
  log "gguf_bench (timeout ${GGUF_BENCH_TIMEOUT:-540}s) args: ${GGUF_BENCH_ARGS:-}"
  # shellcheck disable=SC2086
  timeout "${GGUF_BENCH_TIMEOUT:-540}" "$PY" bench/bench_gguf.py --comfy-root "$COMFY_ROOT" --models-dir "$MODELS_DIR" \
    --out "$OUT/bench_gguf.jsonl" ${GGUF_BENCH_ARGS:-} 2>"$OUT/bench_gguf.log"
  log "gguf_bench rc=$? in $((SECONDS - t0)) s"
  tail -40 "$OUT/bench_gguf.log" | grep -E "ERROR|Error|error|Traceback" | head -20
}

part_gguf_smoke() {
  local t0=$SECONDS
  log "gguf_smoke: tiny GGUF Flux on the GPU"
  "$PY" scripts/synth_models.py --models-dir "$ROOT/.host/models" --set tiny --only flux_tiny_q4_k --only flux_tiny \
    --device cuda --comfy-root "$COMFY_ROOT" 2>&1 | tee -a "$OUT/setup.log"
  timeout 300 "$PY" bench/bench_gguf.py --tiny --comfy-root "$COMFY_ROOT" --out "$OUT/smoke_gguf.jsonl" \
    2>"$OUT/smoke_gguf.log"
  log "gguf_smoke rc=$? in $((SECONDS - t0)) s"
}

part_soak() {
  local t0=$SECONDS host="${SOAK_HOST:-0.33.0}"
  log "soak on ComfyUI $host (timeout ${SOAK_TIMEOUT:-560}s)"
  DISTORCH_COMFY_ROOT="$ROOT/.host/comfyui-$host" DISTORCH_SOAK_PROMPTS="${DISTORCH_SOAK_PROMPTS:-400}" \
    DISTORCH_SOAK_SECONDS="${DISTORCH_SOAK_SECONDS:-420}" DISTORCH_SOAK_MEASURE_EVERY="${DISTORCH_SOAK_MEASURE_EVERY:-4}" \
    timeout "${SOAK_TIMEOUT:-560}" "$PY" -m pytest tests/host/test_soak.py -q -s -p no:cacheprovider \
    -W ignore::pytest.PytestConfigWarning 2>&1 | tee "$OUT/soak.log" | grep -E '^\{"soak"|passed|failed|Error'
  log "soak rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests bench)
install_wheels || exit 1
# Every part but the pure-torch ones imports ComfyUI (the model synthesizer too): unpack the trees first.
for part in "${parts[@]}"; do
  case "$part" in inventory|memkinds|quant) ;; *) ensure_hosts || exit 1; stub_av_if_missing; break ;; esac
done
for part in "${parts[@]}"; do
  case "$part" in
    inventory) part_inventory ;;
    models) part_models ;;
    tests) part_tests ;;
    bench) part_bench ;;
    smoke) part_smoke ;;
    memkinds) part_memkinds ;;
    quant) part_quant ;;
    compare) part_compare ;;
    coexist) part_coexist ;;
    gguf_tests) part_gguf_tests ;;
    gguf_models) part_gguf_models ;;
    gguf_bench) part_gguf_bench ;;
    gguf_smoke) part_gguf_smoke ;;
    soak) part_soak ;;
    both) part_tests; part_bench ;;
    *) echo "unknown part: $part (inventory models tests bench smoke memkinds quant compare coexist gguf_tests" \
            "gguf_models gguf_bench gguf_smoke soak both)" >&2; exit 2 ;;
  esac
done
log "done: $(ls "$OUT" | tr '\n' ' ')"
