"""One flat byte buffer holding the streamed blocks of one store, packed in execution order.

On the host the buffer is allocated exact-size with ``torch.empty`` and page-locked in place with
``cudaHostRegister``: ``torch.empty(pin_memory=True)`` goes through the caching host allocator, which
rounds every request up to a power of two and would waste up to half of the pinned RAM. On a donor GPU
(``device='cuda:N'``) the same class holds blocks in that GPU's memory; there is nothing to pin.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from .layout import BlockLayout, TensorSlot

log = logging.getLogger(__name__)

_CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context, so any GPU can copy from it
_PAGEABLE_COST = (
    "pageable host->GPU copies run at ~6-10 GB/s instead of ~50 GB/s pinned on PCIe 5 x16, "
    "so streamed blocks will take ~5-8x longer to arrive"
)


class HostArena:
    """Streamed blocks packed contiguously in execution order, one segment per block."""

    def __init__(self, layouts: Sequence[BlockLayout], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.layouts = tuple(layouts)
        self._segments: dict[str, tuple[int, int]] = {}
        self._tensors: dict[str, tuple[int, TensorSlot]] = {}
        offset = 0
        for layout in self.layouts:
            self._segments[layout.name] = (offset, layout.nbytes)
            for tensor in layout.tensors:
                self._tensors[tensor.name] = (offset, tensor)
            offset += layout.nbytes  # layouts are padded to 256 bytes: every segment starts aligned
        self.buffer = torch.empty(offset, dtype=torch.uint8, device=self.device)
        self._pinned_bytes = 0

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    @property
    def pinned_bytes(self) -> int:
        return self._pinned_bytes

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(layout.name for layout in self.layouts)

    @property
    def tensor_names(self) -> frozenset[str]:
        return frozenset(self._tensors)

    def segment(self, block_name: str) -> torch.Tensor:
        """The uint8 bytes of one block: the source of its single copy."""
        offset, nbytes = self._segments[block_name]
        return self.buffer[offset : offset + nbytes]

    def view(self, tensor_name: str) -> torch.Tensor:
        """One tensor, typed and shaped, as a view into the arena."""
        block_offset, slot = self._tensors[tensor_name]
        return slot.view_in(self.buffer[block_offset:])

    def contains(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s data lies inside this arena's buffer."""
        start = self.buffer.data_ptr()
        return tensor.device == self.device and start <= tensor.data_ptr() < start + max(self.nbytes, 1)

    def pin(self, cap_bytes: int | None = None) -> bool:
        """Page-lock the host buffer in place; ``False`` (and a warning) when it stays pageable.

        ``cap_bytes`` is how many more bytes may be pinned; a bigger arena stays pageable.
        """
        if self._pinned_bytes or self.device.type != "cpu" or self.nbytes == 0:
            return bool(self._pinned_bytes)
        if cap_bytes is not None and self.nbytes > cap_bytes:
            return self._stay_pageable(f"it needs {self.nbytes} bytes but the pin cap leaves {cap_bytes}")
        if not torch.cuda.is_available():
            return self._stay_pageable("CUDA is not available")
        cudart = torch.cuda.cudart()
        error = int(cudart.cudaHostRegister(self.buffer.data_ptr(), self.nbytes, _CUDA_HOST_REGISTER_PORTABLE))
        if error != 0:
            reason = cudart.cudaGetErrorString(cudart.cudaError(error))
            return self._stay_pageable(f"cudaHostRegister failed with error {error} ({reason})")
        self._pinned_bytes = self.nbytes
        return True

    def unpin(self) -> None:
        """Return the pages to ordinary pageable memory (the contents are kept)."""
        if not self._pinned_bytes:
            return
        error = int(torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr()))
        if error != 0:
            log.warning("cudaHostUnregister of a %d-byte arena failed with error %d", self.nbytes, error)
        self._pinned_bytes = 0

    def _stay_pageable(self, reason: str) -> bool:
        log.warning("streamed-weight arena of %.2f GB stays pageable: %s; %s", self.nbytes / 1e9, reason, _PAGEABLE_COST)
        return False

    def __del__(self) -> None:
        # Freeing still-registered pages would leave the driver with a dangling registration.
        try:
            self.unpin()
        except Exception:  # interpreter shutdown: torch.cuda may already be gone
            pass

    def __repr__(self) -> str:
        return (
            f"HostArena(device={self.device}, blocks={len(self.layouts)}, nbytes={self.nbytes}, "
            f"pinned_bytes={self._pinned_bytes})"
        )
