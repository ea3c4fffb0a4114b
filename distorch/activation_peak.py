"""How much memory one forward needs beside the weights: measured, so the automatic budget can keep exactly that free.

ComfyUI sizes a forward's activations with a per-architecture formula meant to decide whether cond and uncond
fit one batch; for Flux at 1024x1024 and one cond the reserve built on it is four times what the forward
allocates at its peak (H200: 2.02 GB kept free, 0.46 GB allocated). Every byte kept free needlessly is a byte
streamed every step, so after a load the second forward (the first pays one-off allocations such as cuBLAS
workspaces) is measured with the caching allocator's own counters: what is allocated as the forward starts,
and the highest allocation during it. The counters move when work is enqueued, so no synchronisation is needed.

torch keeps one peak counter per device; reading one forward's peak means resetting it as the forward starts.
That is the only side effect (ComfyUI never reads the counter), and it happens once per load.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ActivationPeakProbe:
    """Measures the ``skip_forwards + 1``-th forward of ``root`` on CUDA ``device``; :attr:`peak_bytes` is then the
    most that forward allocated above what was allocated when it started (None until measured, or on a CPU), and
    :attr:`batch` the leading size of that forward's first tensor argument (its batch: cond and uncond together
    count twice), None when it had none."""

    def __init__(self, device: torch.device, root: nn.Module, skip_forwards: int = 1) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self.batch: int | None = None
        self._skip = skip_forwards
        self._start: int | None = None
        self._handles: list[Any] = []
        if device.type != "cuda":
            return
        # No always_call: a forward that raises is not a measurement; the next one starts over.
        self._handles = [root.register_forward_pre_hook(self._forward_starting),
                         root.register_forward_hook(self._forward_finished)]

    @property
    def measuring(self) -> bool:
        return bool(self._handles)

    def _forward_starting(self, module: nn.Module, args: Any) -> None:
        if self._skip > 0:
            return
        self._start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        first = args[0] if args else None
        self.batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else None

    def _forward_finished(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._start is None:  # a skipped forward
            self._skip -= 1
            return
        self.peak_bytes = max(torch.cuda.max_memory_allocated(self.device) - self._start, 0)
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
