"""The packed home of streamed blocks in one store: pinned host RAM, or a donor GPU's memory.

Each block is packed into its OWN page-aligned buffer (its parameters and floating buffers back to back,
256-byte aligned; see distorch.layout), so it moves to the compute device in one copy, and the set of
streamed blocks can change between loads (a re-plan when free VRAM changed) by packing or dropping single
blocks instead of rebuilding one big buffer. On the host a block is page-locked in place (distorch.pinning:
the driver's ``cuMemHostRegister``), exact size: ``torch.empty(pin_memory=True)`` goes through the caching host allocator,
which rounds every request up to a power of two and would waste up to half of the pinned RAM. Only
streamed blocks are ever pinned, so pinned RAM is the streamed bytes (plus at most a page per block).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import pinning
from .layout import BlockLayout, TensorSlot

log = logging.getLogger(__name__)

PAGE = 4096
_PAGEABLE_COST = (
    "pageable host->GPU copies run at ~6-10 GB/s instead of ~50 GB/s pinned on PCIe 5 x16, "
    "so streamed blocks will take ~5-8x longer to arrive"
)


@dataclass
class PackedBlock:
    layout: BlockLayout
    storage: torch.Tensor  # what was allocated (a little larger than the block, for page alignment)
    bytes: torch.Tensor  # the block's packed bytes, page-aligned: the source of its one copy
    pinned: bool = False

    @property
    def registered_bytes(self) -> int:
        return -(-self.layout.nbytes // PAGE) * PAGE  # whole pages, inside `storage`


def _page_aligned(nbytes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer of ``nbytes`` starting on a page boundary, whose last page is ours too (so registering whole
    pages never touches memory another allocation owns)."""
    pages = -(-max(nbytes, 1) // PAGE)
    if device.type != "cpu":
        storage = torch.empty(pages * PAGE, dtype=torch.uint8, device=device)
        return storage, storage[:nbytes]
    storage = torch.empty((pages + 1) * PAGE, dtype=torch.uint8)
    start = -storage.data_ptr() % PAGE
    return storage, storage[start : start + nbytes]


class HostArena:
    """The packed blocks of one store, by block name."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._blocks: dict[str, PackedBlock] = {}
        self._tensors: dict[str, tuple[str, TensorSlot]] = {}

    # -- contents -----------------------------------------------------------------------------------
    def add(self, layout: BlockLayout) -> torch.Tensor:
        """Allocate a block's packed buffer (contents undefined until written); returns its bytes."""
        if layout.name in self._blocks:
            return self._blocks[layout.name].bytes
        storage, packed = _page_aligned(layout.nbytes, self.device)
        self._blocks[layout.name] = PackedBlock(layout, storage, packed)
        for tensor in layout.tensors:
            self._tensors[tensor.name] = (layout.name, tensor)
        return packed

    def remove(self, block_name: str) -> None:
        """Unpin and free one block's buffer (its tensors must no longer point into it)."""
        block = self._blocks.pop(block_name, None)
        if block is None:
            return
        self._unpin_block(block)
        for tensor in block.layout.tensors:
            self._tensors.pop(tensor.name, None)

    def __contains__(self, block_name: str) -> bool:
        return block_name in self._blocks

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(self._blocks)

    @property
    def tensor_names(self) -> frozenset[str]:
        return frozenset(self._tensors)

    @property
    def nbytes(self) -> int:
        return sum(block.layout.nbytes for block in self._blocks.values())

    def segment(self, block_name: str) -> torch.Tensor:
        """The uint8 bytes of one block: the source of its single copy."""
        return self._blocks[block_name].bytes

    def view(self, tensor_name: str) -> torch.Tensor:
        """One tensor, typed and shaped, as a view into its block's packed bytes."""
        block_name, slot = self._tensors[tensor_name]
        return slot.view_in(self._blocks[block_name].bytes)

    def contains(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s data lies inside one of this arena's block buffers."""
        if tensor.device != self.device:
            return False
        pointer = tensor.data_ptr()
        return any(b.bytes.data_ptr() <= pointer < b.bytes.data_ptr() + max(b.layout.nbytes, 1)
                   for b in self._blocks.values())

    # -- page-locking ---------------------------------------------------------------------------------
    @property
    def pinned_bytes(self) -> int:
        return sum(b.layout.nbytes for b in self._blocks.values() if b.pinned)

    def pin(self, block_names: list[str] | tuple[str, ...] | None = None, cap_bytes: int | None = None) -> bool:
        """Page-lock the named blocks (all when None) in place; ``False`` (and one warning) when any stays
        pageable. ``cap_bytes`` is how many more bytes may be pinned: blocks beyond it stay pageable."""
        if self.device.type != "cpu":
            return True  # a donor GPU's memory needs no pinning
        names = list(self._blocks) if block_names is None else list(block_names)
        todo = [self._blocks[n] for n in names if not self._blocks[n].pinned]
        if not todo:
            return True
        if not torch.cuda.is_available():
            return self._stay_pageable(sum(b.layout.nbytes for b in todo), "CUDA is not available")
        left = cap_bytes
        for block in todo:
            if left is not None and block.layout.nbytes > left:
                wanted = sum(b.layout.nbytes for b in todo if not b.pinned)
                return self._stay_pageable(wanted, f"they need {wanted} more bytes but the pin cap leaves {left}")
            error = self._register(block)
            if error:
                return self._stay_pageable(block.layout.nbytes, error)
            if left is not None:
                left -= block.layout.nbytes
        return True

    def unpin(self, block_names: list[str] | tuple[str, ...] | None = None) -> None:
        """Return the named blocks (all when None) to ordinary pageable memory; the contents are kept."""
        names = list(self._blocks) if block_names is None else list(block_names)
        for name in names:
            self._unpin_block(self._blocks[name])

    def _register(self, block: PackedBlock) -> str | None:
        error = pinning.register(block.bytes.data_ptr(), block.registered_bytes)
        block.pinned = error is None
        return error

    def _unpin_block(self, block: PackedBlock) -> None:
        if not block.pinned:
            return
        error = pinning.unregister(block.bytes.data_ptr())
        if error != 0:
            log.warning("cuMemHostUnregister of block %s failed with error %d", block.layout.name, error)
        block.pinned = False

    def _stay_pageable(self, nbytes: int, reason: str) -> bool:
        log.warning("%.2f GB of streamed blocks stay pageable: %s; %s", nbytes / 1e9, reason, _PAGEABLE_COST)
        return False

    def __del__(self) -> None:
        # Freeing still-registered pages would leave the driver with a dangling registration.
        try:
            self.unpin()
        except Exception:  # interpreter shutdown: torch.cuda may already be gone
            pass

    def __repr__(self) -> str:
        return (f"HostArena(device={self.device}, blocks={len(self._blocks)}, nbytes={self.nbytes}, "
                f"pinned_bytes={self.pinned_bytes})")
