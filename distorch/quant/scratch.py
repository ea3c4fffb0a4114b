"""Reusable scratch buffers that weights are dequantized into, layer after layer, without allocating.

A streamed or resident quantized layer needs its weight as a dense tensor only while it runs. Instead of
a new tensor per layer per forward (or a whole dequantized block), every dequantization of a given
(device, dtype, slot) writes into the same buffer, grown to the largest weight requested so far: after
the first forward (or one :meth:`ScratchPool.reserve` at load time) nothing is allocated.

Stream semantics: a buffer's contents are valid until the next request for the same (device, dtype,
slot). Dequantizing layer N+1 into the buffer layer N used is safe when both run on the same stream:
the stream runs layer N's kernels (which read the buffer) before the dequantization that overwrites it.
A consumer on another stream must be ordered with events by the caller. When a buffer grows, the old
one goes back to torch's caching allocator, which only hands it out again after the work already
enqueued on its stream, so growing mid-forward is safe on one stream too.

Use a different ``slot`` for weights that must be alive at the same time (a layer's weight and its
quantized bias, or two weights one kernel takes together).
"""
from __future__ import annotations

import torch

from .tensor import Backend, QuantSpec, dequantize


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ScratchPool:
    """One growable 1-D buffer per (device, dtype, slot)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def buffer(self, numel: int, dtype: torch.dtype, device: torch.device | str, slot: int = 0) -> torch.Tensor:
        """The first ``numel`` elements of the (device, dtype, slot) buffer, grown if it is smaller."""
        key = (_device_key(device), dtype, slot)
        held = self._buffers.get(key)
        if held is None or held.numel() < numel:
            self._buffers.pop(key, None)  # drop the old buffer first: its memory may serve the new one
            held = torch.empty(numel, dtype=dtype, device=key[0])
            self._buffers[key] = held
        return held[:numel]

    def reserve(self, specs: list[QuantSpec], dtype: torch.dtype, device: torch.device | str, slot: int = 0) -> None:
        """Grow the buffer now to the largest of ``specs`` so the first forward allocates nothing."""
        self.buffer(max((spec.numel for spec in specs), default=0), dtype, device, slot)

    def dequantize(self, raw: torch.Tensor, spec: QuantSpec, dtype: torch.dtype, slot: int = 0,
                   backend: Backend = "auto") -> torch.Tensor:
        """``spec``'s weight from ``raw`` as ``dtype``, in this pool's buffer for (raw's device, dtype, slot)."""
        out = self.buffer(spec.numel, dtype, raw.device, slot)
        return dequantize(raw, spec, dtype, out=out, backend=backend)

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values())

    def clear(self) -> None:
        """Drop every buffer (e.g. when the model is unloaded)."""
        self._buffers.clear()

    def __repr__(self) -> str:
        return f"ScratchPool(buffers={len(self._buffers)}, nbytes={self.nbytes})"
