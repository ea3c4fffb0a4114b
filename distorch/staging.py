"""A ring of fixed staging slots on the compute device that streamed blocks are copied into.

Allocated once per load as one buffer, so no allocation happens per block or per op, and a block's
module tensors are re-pointed at typed views of its slot. The views are cached per (block, slot):
rebinding then costs only the ``.data`` assignments.
"""
from __future__ import annotations

import torch

from .layout import ALIGNMENT, BlockLayout, align_up


class StagingRing:
    slot_alignment = ALIGNMENT  # every slot starts aligned, like every block segment

    def __init__(self, device: str | torch.device, slots: int, slot_bytes: int) -> None:
        if slots < 0 or slot_bytes < 0:
            raise ValueError(f"a staging ring needs slots >= 0 and slot_bytes >= 0, got {slots} and {slot_bytes}")
        self.device = torch.device(device)
        self.slots = slots
        self.slot_bytes = align_up(slot_bytes, ALIGNMENT)  # every slot starts 256-byte aligned
        self.buffer: torch.Tensor | None = torch.empty(slots * self.slot_bytes, dtype=torch.uint8, device=self.device)
        self._views: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()

    def slot(self, index: int) -> torch.Tensor:
        """The uint8 bytes of slot ``index``."""
        if self.buffer is None:
            raise RuntimeError("the staging ring was released")
        start = index * self.slot_bytes
        return self.buffer[start : start + self.slot_bytes]

    def views(self, layout: BlockLayout, index: int, offset: int = 0) -> tuple[torch.Tensor, ...]:
        """Typed views of ``layout``'s tensors inside slot ``index`` at byte ``offset`` (a block sharing its slot
        with others, see distorch.schedule), in ``layout.tensors`` order."""
        key = (layout.name, index, offset)
        cached = self._views.get(key)
        if cached is None:
            if offset + layout.nbytes > self.slot_bytes:
                raise ValueError(f"block {layout.name!r} ({layout.nbytes} bytes at offset {offset}) does not fit "
                                 f"a {self.slot_bytes}-byte slot")
            packed = self.slot(index)[offset:]
            cached = tuple(tensor.view_in(packed) for tensor in layout.tensors)
            self._views[key] = cached
        return cached

    def release(self) -> None:
        """Drop the buffer and every cached view (the caller has made sure no copy is in flight)."""
        self._views.clear()
        self.buffer = None

    def __repr__(self) -> str:
        return f"StagingRing(device={self.device}, slots={self.slots}, slot_bytes={self.slot_bytes})"
