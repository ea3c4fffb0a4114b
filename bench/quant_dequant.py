#!/usr/bin/env python3
"""Dequantization speed on the GPU: one JSON line per (GGML type, path), torch and Triton.

A Flux-sized set of weights (by default the matrices of one Flux double block: 4 x 3072x3072,
2 x 3072x12288, 2 x 12288x3072, 188.7 M elements, a few hundred MB raw for 8-bit types) of random raw
bytes is dequantized to ``--dtype`` (bf16) one weight after the other into one reusable scratch buffer,
the way layers are dequantized just before use. A pass over the set is timed with CUDA events after
``--warmup`` passes; the figure is the median of ``--repeats`` passes.

Fields: ``bytes_in`` (raw bytes read), ``bytes_out`` (bytes written), ``ms`` (one pass over the set),
``ms_per_GB_raw`` (ms per 1e9 raw bytes), ``GBps`` ((bytes_in + bytes_out) / time, 1 GB = 1e9 bytes),
``d2d_GBps`` (a 1 GiB device-to-device copy measured in the same run, counted the same way: read +
write), ``ratio_to_d2d`` (GBps / d2d_GBps: 1.0 is a pass as fast as a plain copy moving the same bytes),
``flux_dev_ms`` (``ms_per_GB_raw`` times the raw size of Flux.1-dev's 11.9 B weights in that type: the
extra time per step if every weight is dequantized once per step). Never asserts anything about speed.

    python bench/quant_dequant.py [--types Q8_0,Q4_K] [--paths triton,torch] [--rows-per-program 32,64,128]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distorch.quant import QuantSpec, ScratchPool, has_triton_kernel, triton_usable  # noqa: E402
from distorch.quant import types as T  # noqa: E402

FLUX_BLOCK_SHAPES = [(3072, 3072)] * 4 + [(3072, 12288)] * 2 + [(12288, 3072)] * 2
FLUX_DEV_ELEMENTS = 11.9e9
GIB = 1 << 30


def time_ms(run: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Milliseconds per call of ``run``, each timed with CUDA events on the current stream."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def d2d_bandwidth(device: torch.device, warmup: int, repeats: int) -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(GIB, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_ms(lambda: dst.copy_(src), warmup, repeats))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * GIB / (ms / 1e3) / 1e9


def bench_type(qtype: T.GGMLType, path: str, out_dtype: torch.dtype, device: torch.device, args: argparse.Namespace,
               d2d: float, rows: int | None = None, warps: int | None = None) -> dict[str, Any]:
    specs = [QuantSpec(qtype, shape) for shape in FLUX_BLOCK_SHAPES]
    raws = [torch.randint(0, 256, (spec.nbytes,), dtype=torch.uint8, device=device) for spec in specs]
    pool = ScratchPool()
    pool.reserve(specs, out_dtype, device)
    if rows is None:
        def one_pass() -> None:
            for raw, spec in zip(raws, specs):
                pool.dequantize(raw, spec, out_dtype, backend=path)
    else:  # a launch configuration of the Triton kernels other than the default
        from distorch.quant.dequant_triton import dequantize_into

        def one_pass() -> None:
            for raw, spec in zip(raws, specs):
                dequantize_into(raw, spec.qtype, pool.buffer(spec.numel, out_dtype, device), rows, warps)
    times = time_ms(one_pass, args.warmup, args.repeats)
    ms = statistics.median(times)
    bytes_in = sum(spec.nbytes for spec in specs)
    bytes_out = sum(spec.numel for spec in specs) * torch.empty(0, dtype=out_dtype).element_size()
    gbps = (bytes_in + bytes_out) / (ms / 1e3) / 1e9
    ms_per_gb = ms / (bytes_in / 1e9)
    flux_raw_gb = FLUX_DEV_ELEMENTS / qtype.block_size * qtype.type_size / 1e9
    result = {
        "case": "quant_dequant", "type": qtype.name, "path": path, "out_dtype": str(out_dtype).removeprefix("torch."),
        "weights": len(specs), "elements": sum(spec.numel for spec in specs), "bytes_in": bytes_in,
        "bytes_out": bytes_out, "ms": round(ms, 4), "ms_min": round(min(times), 4), "ms_max": round(max(times), 4),
        "ms_per_GB_raw": round(ms_per_gb, 4), "GBps": round(gbps, 1), "d2d_GBps": round(d2d, 1),
        "ratio_to_d2d": round(gbps / d2d, 3), "flux_dev_raw_GB": round(flux_raw_gb, 2),
        "flux_dev_ms": round(ms_per_gb * flux_raw_gb, 2), "repeats": args.repeats,
    }
    if rows is not None:
        result.update(rows_per_program=rows, num_warps=warps)
    del raws, pool
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--types", default=",".join(t.name for t in T.SUPPORTED_TYPES))
    ap.add_argument("--paths", default="triton,torch")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rows-per-program", default="", help="Triton only: comma list, e.g. 32,64,128 (sweep)")
    ap.add_argument("--num-warps", default="4", help="Triton sweep only: comma list, e.g. 4,8")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"case": "quant_dequant", "skipped": "no CUDA"}))
        return 0
    device = torch.device(args.device)
    torch.cuda.set_device(device)
    out_dtype = getattr(torch, args.dtype)
    d2d = d2d_bandwidth(device, args.warmup, args.repeats)
    print(json.dumps({"case": "quant_dequant_env", "device": torch.cuda.get_device_name(device),
                      "torch": torch.__version__, "triton_usable": triton_usable(device), "d2d_GBps": round(d2d, 1)}),
          flush=True)
    sweep = [(int(r), int(w)) for r in args.rows_per_program.split(",") if r for w in args.num_warps.split(",")]
    for name in args.types.split(","):
        qtype = T.ggml_type(name)
        for path in args.paths.split(","):
            if path == "triton" and not (has_triton_kernel(qtype) and triton_usable(device)):
                continue
            try:
                configs = sweep if (path == "triton" and sweep) else [(None, None)]
                for rows, warps in configs:
                    print(json.dumps(bench_type(qtype, path, out_dtype, device, args, d2d, rows, warps)), flush=True)
            except Exception as error:  # one failing type must not hide the others' numbers
                print(json.dumps({"case": "quant_dequant", "type": name, "path": path, "error": repr(error)[:500]}),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
