"""distorch.streamer: a streamed run is bitwise identical to the all-resident run, whatever happens."""
import warnings

import pytest
import torch

from distorch.layout import layout_block
from distorch.arena import HostArena
from distorch.staging import StagingRing
from distorch.streamer import BlockStreamer, StreamedBlock, SyncCopyBackend
from streaming_helpers import inputs, loaded_engine, reference_outputs
from toy_models import make_model

BLOCKS = 10  # 4 double + 6 single in the toy model


def run(model, xs):
    with torch.no_grad():
        return [model(x) for x in xs]


def assert_bitwise(outputs, expected):
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("count,keep_head", [(1, 1), (5, 1), (9, 1), (10, 0)])
def test_streamed_outputs_equal_resident_outputs(dtype, count, keep_head):
    xs = inputs(dtype)
    model = make_model(dtype)
    loaded_engine(model, count, keep_head_blocks=keep_head)
    assert_bitwise(run(model, xs), reference_outputs(dtype, xs))


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_any_ring_size_gives_identical_outputs(slots):
    xs = inputs(torch.bfloat16)
    model = make_model(torch.bfloat16)
    loaded_engine(model, 7, ring_slots=slots)
    assert_bitwise(run(model, xs), reference_outputs(torch.bfloat16, xs))


def test_prefetch_wraps_across_many_consecutive_forwards():
    xs = inputs(torch.float32, count=12)
    model = make_model()
    engine = loaded_engine(model, 4, ring_slots=3)  # 4 streamed, 3 slots: slot of a block shifts each forward
    assert_bitwise(run(model, xs), reference_outputs(torch.float32, xs))
    assert engine.misses == 0


def build_streamer(model, names, slots):
    """A streamer wired by hand (no engine): arena packed from the model, sync backend."""
    modules = dict(model.named_modules())
    layouts = [layout_block(name, modules[name]) for name in names]
    arena = HostArena("cpu")
    for layout in layouts:
        arena.add(layout)
    blocks = []
    for layout in layouts:
        params = dict(modules[""].named_parameters()) | dict(modules[""].named_buffers())
        targets = tuple(params[t.name] for t in layout.tensors)
        for slot, target in zip(layout.tensors, targets):
            arena.view(slot.name).copy_(target.data)
            target.data = arena.view(slot.name)
        home = tuple(arena.view(t.name) for t in layout.tensors)
        blocks.append(StreamedBlock(layout.name, modules[layout.name], layout, arena.segment(layout.name), targets, home))
    ring = StagingRing("cpu", slots, max(layout.nbytes for layout in layouts))
    streamer = BlockStreamer(blocks, ring, SyncCopyBackend())
    streamer.attach()
    return streamer, arena


def test_more_slots_than_streamed_blocks_is_correct_and_copies_each_block_once_ahead():
    xs = inputs(torch.float32, count=4)
    model = make_model()
    streamer, _ = build_streamer(model, ["double_blocks.2", "single_blocks.3"], slots=5)
    assert streamer.slots == 2
    assert_bitwise(run(model, xs), reference_outputs(torch.float32, xs))


def test_streamed_tensors_point_into_the_arena_between_forwards():
    model = make_model()
    streamer, arena = build_streamer(model, ["double_blocks.1", "single_blocks.2"], slots=2)
    run(model, inputs(torch.float32, count=1))
    assert all(arena.contains(t) for block in streamer.blocks for t in block.targets)


def test_a_forward_that_raises_midway_does_not_corrupt_the_next_one():
    xs = inputs(torch.bfloat16, count=3)
    expected = reference_outputs(torch.bfloat16, xs)
    model = make_model(torch.bfloat16)
    engine = loaded_engine(model, 5, ring_slots=2)
    run(model, xs[:1])
    model.fail_at = 4
    with pytest.raises(RuntimeError, match="toy failure"):
        run(model, xs[:1])
    model.fail_at = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_bitwise(run(model, xs), expected)
    assert engine.misses == 1


def test_blocks_run_out_of_plan_order_take_the_miss_path_and_stay_exact():
    xs = inputs(torch.float32, count=3)
    order = [0, 2, 1, 3, 9, 8, 7, 6, 5, 4]
    reference = make_model()
    reference.order = order
    expected = run(reference, xs)
    model = make_model()
    model.order = order
    engine = loaded_engine(model, 5, ring_slots=2)
    with pytest.warns(RuntimeWarning, match="restarted"):
        assert_bitwise(run(model, xs), expected)
    assert engine.misses > 0


def test_the_miss_warning_is_shown_once():
    model = make_model()
    model.order = list(reversed(range(BLOCKS)))
    loaded_engine(model, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(model, inputs(torch.float32, count=3))
    assert sum("restarted" in str(w.message) for w in caught) == 1


def test_a_streamed_block_called_on_its_own_still_works():
    model = make_model()
    engine = loaded_engine(model, 5)
    block = model.double_blocks[1]
    x = torch.randn(2, 8, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with torch.no_grad():
            out = block(x)
    with torch.no_grad():
        assert torch.equal(out, make_model().double_blocks[1](x))
    assert engine.host_view("double_blocks.1.img_attn.qkv.weight").data_ptr() == block.img_attn.qkv.weight.data_ptr()


def test_invalidate_recopies_from_the_arena():
    xs = inputs(torch.float32, count=2)
    model = make_model()
    streamer, arena = build_streamer(model, ["double_blocks.1", "single_blocks.2"], slots=2)
    run(model, xs)  # the next forward's first blocks are now prefetched from the old values
    streamer.quiesce()
    arena.view("double_blocks.1.img_mlp.0.weight").mul_(2)
    streamer.invalidate()
    reference = make_model()
    with torch.no_grad():
        reference.double_blocks[1].img_mlp[0].weight.mul_(2)
    assert_bitwise(run(model, xs), run(reference, xs))
