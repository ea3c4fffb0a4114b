#!/usr/bin/env python3
"""Fix the free VRAM a ComfyUI host sees: take `free now - target` bytes with ONE allocation, before the host
loads anything, and hold them.

In-process (the benchmark's workers): `occupy(target_free_bytes)` keeps the block alive in the returned
Occupation. As a process of its own (a real ComfyUI server beside it): `python bench/flux/occupy.py
--free-gib 16` prints one JSON line (`"occupier": "ready"`, the numbers) once the block is held, then sleeps
until it is killed, its parent exits, or --max-seconds pass. Needs only torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

GIB = 1 << 30


@dataclass
class Occupation:
    target_free_bytes: int | None
    occupied_bytes: int  # what the block holds (0: nothing taken)
    free_before_bytes: int | None  # free device memory before the block (this process's context included)
    free_after_bytes: int | None  # free device memory right after it
    total_bytes: int | None
    note: str | None = None
    block: Any = field(default=None, repr=False)  # the allocation; dropping it gives the memory back

    def as_dict(self) -> dict[str, Any]:
        return {"free_target_bytes": self.target_free_bytes, "occupied_bytes": self.occupied_bytes,
                "free_before_occupy_bytes": self.free_before_bytes, "free_after_occupy_bytes": self.free_after_bytes,
                "total_bytes": self.total_bytes, "occupy_note": self.note}


def occupy(target_free_bytes: int | None, device: str = "cuda:0") -> Occupation:
    """Take free - target bytes in one torch.empty (no occupation for None, or when already at the target)."""
    if target_free_bytes is None or not torch.cuda.is_available():
        note = "no target" if target_free_bytes is None else "no CUDA: nothing occupied"
        return Occupation(target_free_bytes, 0, None, None, None, note)
    dev = torch.device(device)
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(dev)
    take = free - target_free_bytes
    if take <= 0:
        return Occupation(target_free_bytes, 0, free, free, total,
                          f"only {free / GIB:.2f} GiB free, target {target_free_bytes / GIB:.2f} GiB: nothing taken")
    block = torch.empty(take, dtype=torch.uint8, device=dev)
    after, _ = torch.cuda.mem_get_info(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    return Occupation(target_free_bytes, take, free, after, total, None, block)


def hold(max_seconds: float) -> None:
    """Sleep until killed, the parent is gone, or max_seconds passed (never outlive the run that started us)."""
    parent, deadline = os.getppid(), time.monotonic() + max_seconds
    while time.monotonic() < deadline and os.getppid() == parent:
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--free-gib", type=float, required=True, help="free VRAM to leave, GiB")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--max-seconds", type=float, default=1200.0)
    opts = ap.parse_args(argv)
    try:
        occ = occupy(int(opts.free_gib * GIB), opts.device)
    except Exception as exc:  # say why on the line the parent waits for
        print(json.dumps({"occupier": "failed", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"occupier": "ready", "pid": os.getpid(), **occ.as_dict()}), flush=True)
    hold(opts.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
