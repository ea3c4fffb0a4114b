"""distorch.arena: each streamed block packed in its own page-aligned buffer, its tensors 256-byte aligned."""
import logging

import pytest
import torch

from distorch.arena import PAGE, HostArena
from distorch.layout import ALIGNMENT, layout_block
from toy_models import make_model


@pytest.fixture
def layouts():
    model = make_model(torch.bfloat16)
    return [layout_block(f"single_blocks.{i}", b) for i, b in enumerate(model.single_blocks)][:3] + [
        layout_block("double_blocks.0", model.double_blocks[0])
    ]


def packed(layouts, device="cpu") -> HostArena:
    arena = HostArena(device)
    for layout in layouts:
        arena.add(layout)
    return arena


def test_every_block_starts_on_a_page_and_every_tensor_view_is_256_byte_aligned(layouts):
    arena = packed(layouts)
    for layout in layouts:
        start = arena.segment(layout.name).data_ptr()
        assert start % PAGE == 0
        assert all((arena.view(t.name).data_ptr() - start) % ALIGNMENT == 0 for t in layout.tensors)
    assert arena.nbytes == sum(layout.nbytes for layout in layouts)


def test_a_segment_is_one_contiguous_uint8_range_covering_its_tensors(layouts):
    arena = packed(layouts)
    layout = layouts[1]
    segment = arena.segment(layout.name)
    assert segment.dtype == torch.uint8 and segment.is_contiguous() and segment.numel() == layout.nbytes
    for tensor in layout.tensors:
        view = arena.view(tensor.name)
        assert segment.data_ptr() <= view.data_ptr() < segment.data_ptr() + layout.nbytes


def test_views_are_typed_and_shaped_and_write_through(layouts):
    arena = packed(layouts)
    slot = layouts[0].tensors[0]
    view = arena.view(slot.name)
    assert view.dtype == slot.dtype and tuple(view.shape) == slot.shape
    view.fill_(1.5)
    assert torch.equal(arena.view(slot.name), torch.full(slot.shape, 1.5, dtype=slot.dtype))


def test_adding_a_block_again_keeps_its_buffer_and_contents(layouts):
    arena = packed(layouts[:1])
    arena.view(layouts[0].tensors[0].name).fill_(3.0)
    pointer = arena.segment(layouts[0].name).data_ptr()
    arena.add(layouts[0])
    assert arena.segment(layouts[0].name).data_ptr() == pointer
    assert bool((arena.view(layouts[0].tensors[0].name) == 3.0).all())


def test_blocks_can_be_added_and_removed_one_by_one(layouts):
    arena = packed(layouts[:2])
    arena.add(layouts[3])
    arena.remove(layouts[0].name)
    assert arena.block_names == (layouts[1].name, layouts[3].name)
    assert layouts[0].name not in arena and layouts[3].name in arena
    assert layouts[0].tensors[0].name not in arena.tensor_names
    with pytest.raises(KeyError):
        arena.view(layouts[0].tensors[0].name)


def test_contains_tells_arena_views_from_other_tensors(layouts):
    arena = packed(layouts)
    assert arena.contains(arena.view(layouts[2].tensors[0].name))
    assert not arena.contains(torch.zeros(4))


def test_pinning_without_cuda_stays_pageable_and_warns_with_the_cost(layouts, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    arena = packed(layouts)
    with caplog.at_level(logging.WARNING, logger="distorch.arena"):
        assert arena.pin() is False
    assert arena.pinned_bytes == 0
    assert "pageable" in caplog.text and "GB/s" in caplog.text


def test_pinning_beyond_the_cap_stays_pageable(layouts, caplog):
    arena = packed(layouts)
    with caplog.at_level(logging.WARNING, logger="distorch.arena"):
        assert arena.pin(cap_bytes=0) is False
    assert arena.pinned_bytes == 0
    if not torch.cuda.is_available():
        assert "pageable" in caplog.text


def test_unpin_of_a_pageable_arena_is_harmless(layouts):
    arena = packed(layouts)
    arena.unpin()
    arena.remove(layouts[0].name)
    assert arena.pinned_bytes == 0
