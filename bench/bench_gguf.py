#!/usr/bin/env python3
"""GGUF streaming benchmark: a Flux.1-dev-shaped GGUF (Q8_0, Q4_K) resident and streamed as raw quantized bytes.

In-process real ComfyUI (--comfy-root), the full-size random-weight GGUFs written by scripts/synth_models.py
(``--set full --only flux1_dev_q8_0_full --only flux1_dev_q4_k_full``), loaded the DisTorchUNETLoaderGGUF way,
1024x1024, euler, simple, cfg 1, seeded random conditioning -- the sampling and timing of bench/bench_flux_stream.py
(bench/flux/harness.py): s/it is the median of the timed steps, each step timed by CUDA events in the sampler
callback, the model load outside every timed step.

Cases (one JSON line each; bench/README.md explains every field):
  b_bandwidth                W: pinned host->GPU GB/s, in this run
  bf16_resident              the bf16 Flux all-resident, when --bf16-model exists: the step GGUF is compared with
  <Q>_resident               C_q: all-resident, dequantization included; with `dequant` = every quantized weight
                             dequantized once (one forward's worth), timed alone, and its cost against the bf16 step
  <Q>_stream_<F>gib_free     the rest of the card taken by ONE allocation before loading, so F GiB are free; the
                             node's virtual_vram_gb chosen so the plan + activation reserve + scratch fit in F;
                             measured_over_bound = s/it / max(C_q, streamed bytes / W); peak VRAM without the hog
  (with --cfgs, one round per cfg; names of cfg != 1 end in _cfg<x>)
  <Q>_comfyui_gguf_*         with --comfyui-gguf PATH (a fetched ComfyUI-GGUF checkout, never committed): its
                             UnetLoaderGGUF on the same file with the same free VRAM (and resident: --baseline-resident)

A benchmark, never a test: it asserts nothing about speed. `--tiny` runs the same code with the tiny GGUF Fluxes
(`--cpu`: on the CPU, resident cases only) to check the harness end to end.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # bench/flux, bench/gguf_bench and bench/h2d_bandwidth.py

from flux import harness  # noqa: E402

MODELS = Path("/tmp/models")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-root", type=Path, default=harness.REPO / ".host" / "comfyui-0.3.75")
    ap.add_argument("--models-dir", type=Path, default=MODELS, help="ComfyUI models dir holding diffusion_models/")
    ap.add_argument("--gguf-name", default="distorch-flux1-dev-{qtype}.gguf", help="file name pattern, {qtype}")
    ap.add_argument("--bf16-model", type=Path, default=None,
                    help="bf16 Flux for the reference step (default: distorch-flux1-dev-full.safetensors beside)")
    ap.add_argument("--quants", default="Q8_0,Q4_K")
    ap.add_argument("--free-gib", type=lambda s: [float(x) for x in s.split(",")], default=[16.0, 6.0],
                    help="VRAM left free before loading, per streamed case")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--cfgs", type=lambda s: [float(x) for x in s.split(",")], default=[1.0],
                    help="one round of cases per cfg (names of cfg != 1 end in _cfg<x>)")
    ap.add_argument("--budget", choices=["fit", "auto"], default="fit",
                    help="streamed cases: fit = the virtual_vram_gb that fits the free VRAM (as before); auto = the "
                         "node's default automatic budget")
    ap.add_argument("--prompts", type=int, default=1,
                    help="sampling runs per streamed and baseline case, the model left loaded; the line reports "
                         "the last one (a user's next prompt: the auto budget re-plans by measured compute)")
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ring-slots", type=int, default=2)
    ap.add_argument("--comfyui-gguf", type=Path, default=None, help="a ComfyUI-GGUF checkout: baseline cases")
    ap.add_argument("--baseline-resident", action="store_true",
                    help="also ComfyUI-GGUF with nothing occupied (by default only at the --free-gib targets)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--tiny", action="store_true", help="harness check: the tiny GGUF Fluxes, 256 px, 1+2 steps")
    ap.add_argument("--cpu", dest="tiny_cpu", action="store_true", help="run on the CPU (ComfyUI --cpu)")
    return ap


def apply_tiny(opts: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    opts.size, opts.steps, opts.warmup, opts.tokens = 256, 2, 1, 64
    tiny = {"models_dir": harness.REPO / ".host" / "models", "gguf_name": "distorch-tiny-flux-{qtype}.gguf",
            "quants": "Q4_K", "free_gib": [12.0]}
    for name, value in tiny.items():
        if getattr(opts, name) == ap.get_default(name):
            setattr(opts, name, value)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    opts = ap.parse_args(argv)
    if opts.tiny:
        apply_tiny(opts, ap)
    if opts.bf16_model is None:
        opts.bf16_model = opts.models_dir / "diffusion_models" / (
            "distorch-tiny-flux.safetensors" if opts.tiny else "distorch-flux1-dev-full.safetensors")
    opts.model = opts.models_dir / "diffusion_models" / opts.gguf_name  # what the `env` line names
    opts.cfg = opts.cfgs[0]  # the round being run (cases.run_all sets it per round)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    comfy = harness.setup_comfy(opts.comfy_root, cpu=opts.tiny_cpu)
    harness.import_project_package()
    from gguf_bench import cases  # imports comfyui_distorch.* and ComfyUI's modules: importable only from here on

    return cases.run_all(opts, comfy)


if __name__ == "__main__":
    sys.exit(main())
