"""distorch.arena: streamed blocks packed in execution order, one aligned segment per block."""
import logging

import pytest
import torch

from distorch.arena import HostArena
from distorch.layout import ALIGNMENT, layout_block
from toy_models import make_model


@pytest.fixture
def layouts():
    model = make_model(torch.bfloat16)
    return [layout_block(f"single_blocks.{i}", b) for i, b in enumerate(model.single_blocks)][:3] + [
        layout_block("double_blocks.0", model.double_blocks[0])
    ]


def test_segments_follow_the_given_order_back_to_back(layouts):
    arena = HostArena(layouts)
    base = arena.buffer.data_ptr()
    offsets = [arena.segment(layout.name).data_ptr() - base for layout in layouts]
    expected = [sum(layout.nbytes for layout in layouts[:i]) for i in range(len(layouts))]
    assert offsets == expected
    assert arena.nbytes == sum(layout.nbytes for layout in layouts)


def test_every_segment_and_tensor_view_is_256_byte_aligned(layouts):
    arena = HostArena(layouts)
    base = arena.buffer.data_ptr()
    assert all((arena.segment(layout.name).data_ptr() - base) % ALIGNMENT == 0 for layout in layouts)
    assert all((arena.view(t.name).data_ptr() - base) % ALIGNMENT == 0 for layout in layouts for t in layout.tensors)


def test_a_segment_is_one_contiguous_uint8_range_covering_its_tensors(layouts):
    arena = HostArena(layouts)
    layout = layouts[1]
    segment = arena.segment(layout.name)
    assert segment.dtype == torch.uint8 and segment.is_contiguous() and segment.numel() == layout.nbytes
    for tensor in layout.tensors:
        view = arena.view(tensor.name)
        assert segment.data_ptr() <= view.data_ptr() < segment.data_ptr() + layout.nbytes


def test_views_are_typed_and_shaped_and_write_through(layouts):
    arena = HostArena(layouts)
    slot = layouts[0].tensors[0]
    view = arena.view(slot.name)
    assert view.dtype == slot.dtype and tuple(view.shape) == slot.shape
    view.fill_(1.5)
    assert torch.equal(arena.view(slot.name), torch.full(slot.shape, 1.5, dtype=slot.dtype))


def test_contains_tells_arena_views_from_other_tensors(layouts):
    arena = HostArena(layouts)
    assert arena.contains(arena.view(layouts[2].tensors[0].name))
    assert not arena.contains(torch.zeros(4))


def test_pinning_without_cuda_stays_pageable_and_warns_with_the_cost(layouts, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    arena = HostArena(layouts)
    with caplog.at_level(logging.WARNING, logger="distorch.arena"):
        assert arena.pin() is False
    assert arena.pinned_bytes == 0
    assert "pageable" in caplog.text and "GB/s" in caplog.text


def test_pinning_beyond_the_cap_stays_pageable(layouts, caplog):
    arena = HostArena(layouts)
    with caplog.at_level(logging.WARNING, logger="distorch.arena"):
        assert arena.pin(cap_bytes=arena.nbytes - 1) is False
    assert "cap" in caplog.text and arena.pinned_bytes == 0


def test_unpin_of_a_pageable_arena_is_harmless(layouts):
    arena = HostArena(layouts)
    arena.unpin()
    assert arena.pinned_bytes == 0
