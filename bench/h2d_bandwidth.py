#!/usr/bin/env python3
"""Host-to-GPU copy bandwidth, the W of the streaming bound T >= max(C, B / W).

Pinned: one page-locked host buffer of `chunk` bytes (1 GiB by default) copied to one device buffer
`repeats` times after `warmup` copies, each copy timed with CUDA events on a side stream; the figure is
bytes / median copy time, in GB/s (1 GB = 1e9 bytes). Pageable: the same, from an ordinary host tensor
(informational: that is what a `.to("cpu")` offload streams from).

Prefers the project's own `distorch.bandwidth.measure_h2d_bandwidth` when it exists and answers; the
result says which source was used. Standalone: `python bench/h2d_bandwidth.py [--device cuda:0]` prints
one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

GIB = 1 << 30


def _time_copies(src: torch.Tensor, dst: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    stream = torch.cuda.Stream(device=dst.device)
    seconds = []
    with torch.cuda.stream(stream):
        for i in range(warmup + repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                seconds.append(start.elapsed_time(end) / 1e3)
    return seconds


def measure_own(device: str = "cuda:0", chunk: int = GIB, warmup: int = 2, repeats: int = 8,
                pageable_repeats: int = 3) -> dict[str, Any]:
    dev = torch.device(device)
    dst = torch.empty(chunk, dtype=torch.uint8, device=dev)
    pinned = torch.empty(chunk, dtype=torch.uint8, pin_memory=True)
    pinned.random_(0, 255)
    pinned_s = _time_copies(pinned, dst, warmup, repeats)
    del pinned
    result: dict[str, Any] = {
        "source": "bench/h2d_bandwidth.py",
        "chunk_bytes": chunk,
        "pinned_GBps": chunk / statistics.median(pinned_s) / 1e9,
        "pinned_GBps_min": chunk / max(pinned_s) / 1e9,
        "pinned_GBps_max": chunk / min(pinned_s) / 1e9,
        "pinned_repeats": repeats,
    }
    if pageable_repeats > 0:
        pageable = torch.empty(chunk, dtype=torch.uint8)
        pageable.random_(0, 255)
        pageable_s = _time_copies(pageable, dst, 1, pageable_repeats)
        result["pageable_GBps"] = chunk / statistics.median(pageable_s) / 1e9
        del pageable
    del dst
    torch.cuda.empty_cache()
    return result


def measure_project(device: str) -> dict[str, Any] | None:
    """The project's own measurement, if the module exists; its answer is recorded as given."""
    try:
        from comfyui_distorch.distorch.bandwidth import measure_h2d_bandwidth  # type: ignore
    except Exception:
        try:
            from distorch.bandwidth import measure_h2d_bandwidth  # type: ignore
        except Exception:
            return None
    try:
        try:
            value = measure_h2d_bandwidth(torch.device(device))
        except TypeError:
            value = measure_h2d_bandwidth()
    except Exception as exc:  # recorded, never fatal: our own measurement is the fallback
        return {"source": "distorch.bandwidth.measure_h2d_bandwidth", "error": repr(exc)}
    gbps = None
    if isinstance(value, (int, float)):
        gbps = float(value)
    else:
        for attr in ("gbps", "GBps", "pinned_gbps", "bandwidth_gbps"):
            if hasattr(value, attr):
                gbps = float(getattr(value, attr))
                break
            if isinstance(value, dict) and attr in value:
                gbps = float(value[attr])
                break
    return {"source": "distorch.bandwidth.measure_h2d_bandwidth", "raw": repr(value)[:300], "pinned_GBps": gbps}


def measure(device: str = "cuda:0") -> dict[str, Any]:
    """Both measurements; `W_GBps` is the HIGHER of the two (the median of ours, the best of the project's):
    the faster the link is taken to be, the stricter the bound bytes/W that streaming is judged against."""
    own = measure_own(device)
    project = measure_project(device)
    candidates = [(own["pinned_GBps"], own["source"])]
    if project and project.get("pinned_GBps"):
        candidates.append((project["pinned_GBps"], project["source"]))
    w, source = max(candidates)
    return {"W_GBps": w, "W_source": source, "own": own, "project": project}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args(argv)
    repo = str(Path(__file__).resolve().parent.parent)
    if repo not in sys.path:
        sys.path.append(repo)  # `distorch` as a top-level package, for the project's own measurement
    if not torch.cuda.is_available():
        print(json.dumps({"case": "b_bandwidth", "skipped": "no CUDA"}))
        return 0
    print(json.dumps({"case": "b_bandwidth", **measure(args.device)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
