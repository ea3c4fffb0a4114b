"""Where a sampling run's time goes on the compute stream: a torch.profiler trace and the gaps in it.

`profiled(path)` records one sampling run (CPU ops, CUDA runtime calls, kernels and copies) and writes the
chrome trace (gzip). `gap_report(trace)` reads such a trace back and answers the question the step times
cannot: when the compute stream sat idle, was it waiting on the device (a kernel already launched, held by a
stream wait: a copy not landed yet) or on the host (the next kernel launched after the stream went idle),
and what the host was doing meanwhile (the CUDA runtime calls and CPU ops of that window). Gaps are split
into those inside a model forward (the harness's `bench.forward` range) and those between forwards.

    python bench/flux/profiling.py trace.json.gz          # the report of a trace written by --profile
"""
from __future__ import annotations

import contextlib
import gzip
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import torch

FORWARD_RANGE = "bench.forward"  # record_function name of one model forward (bench/flux/harness.py)
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MIN_GAP_US = 20.0  # idle shorter than this is launch jitter, not a cause


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """Profile the block into ``path`` (a .json.gz chrome trace); a no-op when path is None."""
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # every launched kernel lands in the trace
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix("")  # export writes plain JSON; keep only the gzip
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        dst.write(src.read())
    raw.unlink()


def load_trace(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def _compute_stream(gpu: list[dict]) -> Any:
    busy: Counter = Counter()
    for e in gpu:
        if e["cat"] == "kernel":
            busy[e["tid"]] += e["dur"]
    return busy.most_common(1)[0][0]


def _within(ranges: list[tuple[float, float]], t: float) -> int | None:
    for i, (start, end) in enumerate(ranges):
        if start <= t <= end:
            return i
    return None


def _host_window(cpu: list[dict], runtime: list[dict], start: float, end: float) -> dict[str, Any]:
    """The host's work between ``start`` and ``end``: long runtime calls, then the CPU ops by time spent."""
    calls = Counter()
    for e in runtime:
        if e["ts"] < end and e["ts"] + e["dur"] > start and e["dur"] >= MIN_GAP_US:
            calls[e["name"]] += min(e["ts"] + e["dur"], end) - max(e["ts"], start)
    ops = Counter()
    for e in cpu:
        if e["ts"] < end and e["ts"] + e["dur"] > start:
            ops[e["name"]] += min(e["ts"] + e["dur"], end) - max(e["ts"], start)
    return {"runtime_us": dict(calls.most_common(4)), "cpu_ops_us": dict(ops.most_common(6))}


def gap_report(events: list[dict[str, Any]], top: int = 8) -> dict[str, Any]:
    """Idle time of the compute stream, by where (in a forward / between) and why (device wait / host late)."""
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    runtime = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    cpu = [e for e in events if e.get("cat") == "cpu_op"]
    forwards = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                      if e.get("cat") == "user_annotation" and e.get("name") == FORWARD_RANGE)
    launch = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    if not any(e["cat"] == "kernel" for e in gpu):
        return {"forwards": len(forwards), "note": "no kernels in the trace (a CPU run)"}
    stream = _compute_stream(gpu)
    on_stream = [e for e in gpu if e["tid"] == stream]
    idle = defaultdict(float)
    busy = sum(e["dur"] for e in on_stream)
    gaps = []
    for prev, nxt in zip(on_stream, on_stream[1:]):
        start, end = prev["ts"] + prev["dur"], nxt["ts"]
        if end - start < MIN_GAP_US:
            continue
        call = launch.get(nxt.get("args", {}).get("correlation"))
        launched = call["ts"] if call else None
        where = "forward" if _within(forwards, launched if launched is not None else end) is not None else "between"
        why = "host_late" if launched is not None and launched > start else "device_wait"
        idle[f"{where}_{why}_us"] += end - start
        if "Pageable" in nxt["name"]:  # a host copy on the compute stream queues behind any copy in flight
            idle["before_pageable_copies_us"] += end - start
        gaps.append({"gap_us": round(end - start, 1), "where": where, "why": why,
                     "at_us": round(start - on_stream[0]["ts"]),
                     "before": prev["name"][:60], "after": nxt["name"][:60],
                     **(_host_window(cpu, runtime, start, launched) if why == "host_late" else {})})
    span = on_stream[-1]["ts"] + on_stream[-1]["dur"] - on_stream[0]["ts"] if on_stream else 0.0
    gaps.sort(key=lambda g: -g["gap_us"])
    pageable = sum(1 for e in on_stream if "Pageable" in e["name"])
    return {"compute_stream": stream, "span_us": round(span), "busy_us": round(busy), "forwards": len(forwards),
            "pageable_copies_on_compute_stream": pageable,
            "idle_us": {k: round(v) for k, v in sorted(idle.items())}, "largest_gaps": gaps[:top]}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(json.dumps({"trace": name, **gap_report(load_trace(Path(name)))}))
