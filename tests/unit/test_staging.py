"""distorch.staging: fixed slots allocated once, cached typed views per (block, slot)."""
import pytest
import torch

from distorch.layout import ALIGNMENT, layout_block
from distorch.staging import StagingRing
from toy_models import make_model


@pytest.fixture
def layout():
    return layout_block("double_blocks.0", make_model(torch.bfloat16).double_blocks[0])


def test_slots_are_one_buffer_allocated_once(layout):
    ring = StagingRing("cpu", 3, layout.nbytes)
    assert ring.nbytes == 3 * ring.slot_bytes
    assert ring.slot(2).data_ptr() == ring.buffer.data_ptr() + 2 * ring.slot_bytes


def test_slot_size_is_rounded_up_to_the_alignment():
    ring = StagingRing("cpu", 2, 1000)
    assert ring.slot_bytes % ALIGNMENT == 0 and ring.slot_bytes >= 1000


def test_views_are_cached_per_block_and_slot(layout):
    ring = StagingRing("cpu", 2, layout.nbytes)
    assert ring.views(layout, 1) is ring.views(layout, 1)
    assert ring.views(layout, 0)[0].data_ptr() != ring.views(layout, 1)[0].data_ptr()


def test_views_lie_inside_their_slot_with_the_layout_types(layout):
    ring = StagingRing("cpu", 2, layout.nbytes)
    start = ring.slot(1).data_ptr()
    for view, slot in zip(ring.views(layout, 1), layout.tensors):
        assert view.dtype == slot.dtype and tuple(view.shape) == slot.shape
        assert view.data_ptr() == start + slot.offset


def test_a_block_larger_than_a_slot_is_refused(layout):
    ring = StagingRing("cpu", 1, layout.nbytes // 2)
    with pytest.raises(ValueError, match="does not fit"):
        ring.views(layout, 0)


def test_release_drops_the_buffer(layout):
    ring = StagingRing("cpu", 2, layout.nbytes)
    ring.views(layout, 0)
    ring.release()
    assert ring.nbytes == 0
    with pytest.raises(RuntimeError):
        ring.slot(0)
