"""Where a model's repeated blocks are, and how one block's tensors pack into one flat byte range.

A block is an element of an ``nn.ModuleList`` (Flux ``double_blocks.0`` .. ``single_blocks.37``; for a
list of ``nn.Sequential`` such as a UNet's ``input_blocks.*``, the sequential's layers), found by walking the module tree in registration order, which is the
order the model code runs them in for every model we target. A block's parameters and floating
buffers are packed back to back, each at a 256-byte aligned offset, so the whole block moves in ONE
copy and every tensor can be re-viewed with its own dtype straight out of the packed bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

ALIGNMENT = 256  # bytes; cudaMalloc alignment, and enough for every dtype's element size


def align_up(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """``nbytes`` rounded up to a multiple of ``alignment``."""
    return -(-nbytes // alignment) * alignment


@dataclass(frozen=True)
class TensorSlot:
    """One tensor's place inside a packed block: ``name`` is its path relative to the model root."""

    name: str
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    def view_in(self, packed: torch.Tensor) -> torch.Tensor:
        """This tensor, typed and shaped, as a view of ``packed`` (uint8 bytes of its block)."""
        raw = packed[self.offset : self.offset + self.nbytes]
        return raw.view(self.dtype).view(self.shape)


@dataclass(frozen=True)
class BlockLayout:
    """A block's packed form: ``nbytes`` is padded to ``ALIGNMENT`` so blocks stack aligned."""

    name: str
    nbytes: int
    tensors: tuple[TensorSlot, ...]


def find_blocks(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of ``root`` in execution order: every ``nn.ModuleList`` element.

    Found blocks are not searched further (a block holding its own ModuleList stays one block).
    """
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            path = prefix + child_name
            if isinstance(child, nn.ModuleList):
                for index, block in child.named_children():
                    found.extend(_callable_parts(f"{path}.{index}", block))
            else:
                walk(path + ".", child)

    walk("", root)
    return found


def _callable_parts(name: str, block: nn.Module) -> list[tuple[str, nn.Module]]:
    """A block whose hooks are sure to run. Model code often iterates an ``nn.Sequential`` instead of
    calling it (ComfyUI's UNet runs ``TimestepEmbedSequential`` layer by layer), so the hooks of the
    sequential itself would never fire: its children with weights are the blocks then."""
    if not isinstance(block, nn.Sequential):
        return [(name, block)]
    return [(f"{name}.{child_name}", child) for child_name, child in block.named_children()
            if any(True for _ in child.parameters())]


def packed_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors a block packs: parameters, then floating buffers (integer buffers such as
    counters stay where they are: they are tiny and their dtype must not be reinterpreted)."""
    yield from module.named_parameters()
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point() or buffer.is_complex():
            yield name, buffer


def layout_block(name: str, module: nn.Module) -> BlockLayout:
    """Pack ``module``'s parameters and floating buffers contiguously, each offset 256-aligned."""
    slots = []
    offset = 0
    for local_name, tensor in packed_tensors(module):
        nbytes = tensor.numel() * tensor.element_size()
        slots.append(TensorSlot(f"{name}.{local_name}", offset, nbytes, tuple(tensor.shape), tensor.dtype))
        offset = align_up(offset + nbytes)
    return BlockLayout(name, offset, tuple(slots))


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def other_bytes(root: nn.Module, blocks: Sequence[tuple[str, nn.Module]] | None = None) -> int:
    """Bytes of ``root``'s parameters and buffers that are not packed into a block layout."""
    blocks = find_blocks(root) if blocks is None else blocks
    packed = {id(t) for _, block in blocks for _, t in packed_tensors(block)}
    everything = [t for _, t in root.named_parameters()] + [t for _, t in root.named_buffers()]
    return tensor_bytes([t for t in everything if id(t) not in packed])


@dataclass(frozen=True)
class ModelLayout:
    """Every block's layout in execution order, plus the bytes that live outside blocks."""

    blocks: tuple[BlockLayout, ...]
    other_bytes: int

    @property
    def block_sizes(self) -> list[tuple[str, int]]:
        """``(name, nbytes)`` per block: what :func:`distorch.planner.plan_placement` takes."""
        return [(block.name, block.nbytes) for block in self.blocks]

    @property
    def total_bytes(self) -> int:
        return self.other_bytes + sum(block.nbytes for block in self.blocks)


def layout_model(root: nn.Module) -> ModelLayout:
    """Layouts of all of ``root``'s blocks and the size of everything else."""
    blocks = find_blocks(root)
    return ModelLayout(tuple(layout_block(n, m) for n, m in blocks), other_bytes(root, blocks))
