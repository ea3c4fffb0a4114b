"""What one sampling run did besides its step times: each forward's batch, the first step's parts, device memory.

`ForwardLog` is fed by the model unet function wrapper (one call = one model forward) and the sampler callback
(one call = one step). A step of cfg > 1 is ONE forward of batch 2 when ComfyUI batches cond and uncond, two
forwards of batch 1 when it splits them (too little free VRAM at sampling time): every streamed byte then
crosses twice. `DeviceMemory` samples `torch.cuda.mem_get_info()`, which sees every allocation of the
process - torch's counters miss Dynamic VRAM's own (comfy-aimdo allocates outside torch's allocator).
"""
from __future__ import annotations

import hashlib
import statistics
import time
from typing import Any

import torch


class ForwardLog:
    """Per forward: the step it belongs to and its batch; marks for the first forward's start and end."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.forwards: list[tuple[int, int]] = []  # (step index, batch) per forward
        self.first_start: Any = None
        self.first_end: Any = None
        self.first_start_wall: float | None = None

    def started(self, step: int, batch: int) -> None:
        if self.first_start is None:
            self.first_start = self.clock.mark()
            self.first_start_wall = time.perf_counter()
        self.forwards.append((step, batch))

    def finished(self) -> None:
        if self.first_end is None:
            self.first_end = self.clock.mark()

    def batches_per_step(self, steps: int) -> list[list[int]]:
        per_step: list[list[int]] = [[] for _ in range(steps)]
        for step, batch in self.forwards:
            if step < steps:
                per_step[step].append(batch)
        return per_step

    def summary(self, ask: Any, ask_wall: float, marks: list[Any], warmup: int) -> dict[str, Any]:
        """The first step measured from the moment sampling was asked for (model load to the device included,
        what a user waits for), its load and first-forward parts, and the forwards of every step."""
        seconds = self.clock.seconds
        per_step = self.batches_per_step(len(marks))
        timed = per_step[warmup:] or per_step
        counts = [len(b) for b in timed]
        return {
            "first_step_s": seconds(ask, marks[0]) if marks else None,
            "load_s": seconds(ask, self.first_start) if self.first_start is not None else None,
            "load_wall_s": self.first_start_wall - ask_wall if self.first_start_wall is not None else None,
            "first_forward_s": seconds(self.first_start, self.first_end) if self.first_end is not None else None,
            "forwards_per_step": statistics.median(counts) if counts else None,
            "forward_batches": per_step,
        }


def cond_uncond_batched(forward_batches: list[list[int]], cfg: float) -> bool | None:
    """cfg > 1: True when every step was one forward (cond and uncond batched); None at cfg 1 (no uncond)."""
    if cfg == 1.0 or not forward_batches:
        return None
    return all(len(step) == 1 for step in forward_batches)


class DeviceMemory:
    """Lowest free device memory seen (after load, at every step, after sampling): the process's peak
    footprint = total - min(free) - what the occupier holds."""

    def __init__(self, device: str | None) -> None:
        self.device = device
        self.total: int | None = None
        self.min_free: int | None = None

    def sample(self) -> None:
        if self.device is None:
            return
        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        self.total = total
        self.min_free = free if self.min_free is None else min(self.min_free, free)

    def reset(self) -> None:
        self.min_free = None

    def peak_used(self, occupied: int) -> int | None:
        if self.min_free is None or self.total is None:
            return None
        return self.total - self.min_free - occupied


def latent_sha256(latent: torch.Tensor) -> str:
    """sha256 of the latent's fp32 bytes: equal hashes = bit-identical outputs."""
    return hashlib.sha256(latent.float().contiguous().cpu().numpy().tobytes()).hexdigest()
