#!/usr/bin/env python3
"""Flux.1-dev-shaped streaming benchmark: DisTorch against all-resident and ComfyUI's own partial offload.

In-process real ComfyUI (the tree at --comfy-root, 0.3.75 in this project), the full-size random-weight
Flux.1-dev bf16 model written by scripts/synth_models.py, 1024x1024 (latent 16x128x128), euler, simple
scheduler, cfg 1 (one forward per step), conditioning = seeded random tensors of T5/CLIP shapes (context
[1, 512, txt_in.in_features], pooled [1, vector_in.in_features], guidance 3.5), so no text encoder is loaded.

Timing: one `comfy.sample.sample` call of warmup + timed steps per case; the sampler callback records a CUDA
event on the compute stream at the end of every step (no host synchronisation is added); s/it is the MEDIAN
of the timed steps' event-to-event times (steps after the warm-up ones; the model load happens before the
first step and is never inside a timed step). `s_per_it_mean` is given too.

Cases (one JSON line each; see bench/README.md for every field):
  b_bandwidth           W: pinned host->GPU GB/s, 1 GiB chunks
  a_resident            C: everything on the GPU, batch 1
  f_resident_b4         batch 4, everything on the GPU (the compute-bound reference)
  e_native_<X>gb        ComfyUI's own partial load (LoadedModel/ModelPatcher.partially_load via
                        load_models_gpu, async offload streams and pinned memory as core sets them) with
                        lowvram_model_memory = the DisTorch case's device footprint (resident + ring)
  c_distorch_<X>gb      DisTorch, ~13 GB streamed (make_streaming on the freshly loaded ModelPatcher)
  f_distorch_<X>gb_b4   batch 4 through the same DisTorch model
  d_distorch_<X>gb      DisTorch, ~22 GB streamed (~2 GB of weights kept on the GPU)

A benchmark, never a test: it asserts nothing about speed. `--tiny` runs the same code path with the tiny
Flux (1+1 blocks; `--cpu` for the CPU) to check the harness end to end. The code lives in bench/flux/.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # bench/flux and bench/h2d_bandwidth.py, however this file is started

from flux import harness  # noqa: E402

TINY_MODEL = harness.REPO / ".host" / "models" / "diffusion_models" / "distorch-tiny-flux.safetensors"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-root", type=Path, default=harness.REPO / ".host" / "comfyui-0.3.75")
    ap.add_argument("--model", type=Path,
                    default=Path("/tmp/models/diffusion_models/distorch-flux1-dev-full.safetensors"))
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size/8)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each sampling run")
    ap.add_argument("--tokens", type=int, default=512, help="text tokens of the random context")
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-f", type=int, default=4, help="batch of the compute-bound case (f)")
    ap.add_argument("--stream-c-gb", type=float, default=13.0, help="target streamed GB of case (c)")
    ap.add_argument("--stream-d-gb", type=float, default=22.0, help="target streamed GB of case (d)")
    ap.add_argument("--assume-w-gbps", type=float, default=None, help="W when case b is not run")
    ap.add_argument("--ring-slots", type=int, default=2, help="staging slots of the DisTorch cases")
    ap.add_argument("--single-copy-stream", action="store_true",
                    help="copy each host block on one stream instead of two halves on two streams")
    ap.add_argument("--keep-head-blocks", type=int, default=1, help="leading blocks the DisTorch plans keep resident")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--tiny", action="store_true",
                    help="harness check: tiny Flux, 256 px, 1+2 steps, batch 2 for (f), small stream targets, "
                         "ring of 1 slot and no resident head block")
    ap.add_argument("--cpu", dest="tiny_cpu", action="store_true", help="run on the CPU (ComfyUI --cpu)")
    return ap


def apply_tiny(opts: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """--tiny: small sizes, and the defaults the options were left at replaced by the tiny ones."""
    opts.size, opts.steps, opts.warmup, opts.batch_f, opts.tokens = 256, 2, 1, 2, 64
    tiny = {"model": TINY_MODEL, "stream_c_gb": 0.3, "stream_d_gb": 0.6,
            # The tiny Flux has one double and one single block, the double one about two thirds of the model: only a
            # ring of one slot with no resident head block leaves the planner a plan that streams anything.
            "ring_slots": 1, "keep_head_blocks": 0}
    for name, value in tiny.items():
        if getattr(opts, name) == ap.get_default(name):
            setattr(opts, name, value)


def run(opts: argparse.Namespace) -> int:
    comfy = harness.setup_comfy(opts.comfy_root, cpu=opts.tiny_cpu)
    harness.import_project_package()
    from flux import cases  # imports comfyui_distorch.* and ComfyUI's modules: importable only from here on

    return cases.run_all(opts, comfy)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    opts = ap.parse_args(argv)
    if opts.tiny:
        apply_tiny(opts, ap)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
