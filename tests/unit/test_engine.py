"""distorch.engine: load/unload cycles, host RAM not duplicated, LoRA-style writes into the arena."""
import gc

import torch

from distorch.engine import EngineOptions, StreamingEngine
from distorch.registry import live_engines, pinned_bytes_total
from streaming_helpers import inputs, loaded_engine, plan_streaming, reference_outputs
from toy_models import make_model

WEIGHT = "double_blocks.3.img_attn.qkv.weight"


def run(model, xs):
    with torch.no_grad():
        return [model(x) for x in xs]


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_load_returns_resident_tensor_bytes_plus_ring_bytes_within_the_plan():
    model = make_model()
    plan = plan_streaming(model, 5, ring_slots=2)
    engine = StreamingEngine(model, plan, EngineOptions(ring_slots=2))
    placed = engine.load("cpu")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    resident = sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in engine.streamed_tensor_names())
    ring = 2 * max(size for name, size in plan.block_sizes if name in plan.streamed_names)
    assert placed == resident + ring
    assert placed <= plan.device_footprint_bytes  # the plan counts blocks padded to 256 bytes


def test_streamed_parameters_share_storage_with_the_arena_after_load():
    model = make_model()
    engine = loaded_engine(model, 5)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    arena = next(iter(engine._arenas.values()))
    for name in engine.streamed_tensor_names():
        assert arena.contains(params[name])
        assert params[name].data_ptr() == engine.host_view(name).data_ptr()


def test_resident_tensors_do_not_live_in_the_arena():
    model = make_model()
    engine = loaded_engine(model, 5)
    arena = next(iter(engine._arenas.values()))
    assert not arena.contains(model.img_in.weight)
    assert not arena.contains(model.double_blocks[0].img_attn.qkv.weight)


def test_twenty_unload_load_cycles_leave_no_hooks_and_the_same_outputs():
    xs = inputs(torch.bfloat16, count=2)
    expected = reference_outputs(torch.bfloat16, xs)
    model = make_model(torch.bfloat16)
    hooks_before = hook_count(model)
    engine = StreamingEngine(model, plan_streaming(model, 5), EngineOptions())
    for _ in range(20):
        engine.load("cpu")
        assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))
        engine.unload("cpu")
        assert hook_count(model) == hooks_before and not engine.is_loaded
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))  # unloaded module works too


def test_the_arena_persists_across_unload_and_load():
    model = make_model()
    engine = loaded_engine(model, 5)
    pointer = engine.host_view(WEIGHT).data_ptr()
    engine.unload("cpu")
    engine.load("cpu")
    assert engine.host_view(WEIGHT).data_ptr() == pointer


def test_write_streamed_changes_outputs_exactly_like_setting_a_resident_weight():
    xs = inputs(torch.bfloat16, count=2)
    model = make_model(torch.bfloat16)
    engine = loaded_engine(model, 5)
    assert WEIGHT in engine.streamed_tensor_names()
    run(model, xs)  # prefetched slots now hold the old value
    new_value = torch.randn_like(model.double_blocks[3].img_attn.qkv.weight)
    engine.write_streamed(WEIGHT, new_value)
    reference = make_model(torch.bfloat16)
    with torch.no_grad():
        reference.double_blocks[3].img_attn.qkv.weight.copy_(new_value)
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), run(reference, xs)))


def test_updating_batches_several_writes_into_one_invalidation():
    model = make_model()
    engine = loaded_engine(model, 5)
    calls = []
    original = engine._streamer.invalidate
    engine._streamer.invalidate = lambda: (calls.append(1), original())
    with engine.updating():
        for name in sorted(engine.streamed_tensor_names())[:4]:
            engine.write_streamed(name, torch.zeros_like(engine.host_view(name)))
    assert calls == [1]


def test_a_replaced_weight_is_taken_into_the_arena_on_the_next_load():
    xs = inputs(torch.float32, count=1)
    model = make_model()
    engine = loaded_engine(model, 5)
    engine.unload("cpu")
    with torch.no_grad():
        model.double_blocks[3].img_attn.qkv.weight.data = torch.ones_like(model.double_blocks[3].img_attn.qkv.weight)
    expected = run(model, xs)
    engine.load("cpu")
    assert torch.equal(run(model, xs)[0], expected[0])
    assert engine.host_view(WEIGHT).data_ptr() == model.double_blocks[3].img_attn.qkv.weight.data_ptr()


def test_engines_are_registered_weakly_and_pin_nothing_on_cpu():
    model = make_model()
    engine = loaded_engine(model, 5)
    assert engine in live_engines()
    assert engine.pinned_bytes == 0 and pinned_bytes_total() == 0
    engine.unload("cpu")
    del engine
    gc.collect()
    assert all(e.root is not model for e in live_engines())


def test_a_plan_that_streams_nothing_just_moves_the_model():
    xs = inputs(torch.float32, count=2)
    model = make_model()
    engine = StreamingEngine(model, plan_streaming(model, 0), EngineOptions())
    engine.load("cpu")
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), reference_outputs(torch.float32, xs)))
    engine.block_seconds()  # read at the end of each prompt (outside any forward: no hook removes a hook)
    assert hook_count(model) == 0  # the block profiler's hooks are gone once its measurement was read


def test_every_block_is_timed_on_the_second_forward_after_a_load():
    model = make_model()
    engine = loaded_engine(model, 3)
    run(model, inputs(torch.float32, count=1))
    assert engine.block_seconds() is None  # the first forward pays one-off costs: not measured
    run(model, inputs(torch.float32, count=1))
    seconds = engine.block_seconds()
    assert list(seconds) == [name for name, _ in engine.plan.block_sizes]
    assert all(value > 0 for value in seconds.values())
    hooks = hook_count(model)
    run(model, inputs(torch.float32, count=1))
    assert hook_count(model) == hooks and engine.block_seconds() == seconds  # measured once per load


def test_a_replan_packs_only_blocks_never_packed_before_and_outputs_stay_unchanged():
    xs = inputs(torch.bfloat16, count=2)
    expected = reference_outputs(torch.bfloat16, xs)
    model = make_model(torch.bfloat16)
    blocks = len(plan_streaming(model, 0).block_sizes)
    first, second = plan_streaming(model, 3), plan_streaming(model, blocks - 1)  # the second streams all but the head
    engine = StreamingEngine(model, first, EngineOptions())
    engine.load("cpu")
    kept = next(n for n in first.streamed_names if n in second.streamed_names)
    kept_pointer = engine._arenas[torch.device("cpu")].segment(kept).data_ptr()
    engine.unload("cpu")
    engine.replan(second)
    engine.load("cpu")
    arena = engine._arenas[torch.device("cpu")]
    assert set(arena.block_names) == set(second.streamed_names)
    assert arena.segment(kept).data_ptr() == kept_pointer  # packed once, never again
    assert engine.load_stats.packed_bytes == sum(
        size for name, size in second.block_sizes if name in set(second.streamed_names) - set(first.streamed_names))
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))
    engine.unload("cpu")
    engine.replan(first)  # back to fewer streamed blocks: the others keep their packs as their host copy
    engine.load("cpu")
    assert set(arena.block_names) == set(second.streamed_names) and engine.load_stats.packed_bytes == 0
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))
    engine.unload("cpu")  # unloading rebinds the resident-but-packed blocks to their packs: no host copy twice
    everything = dict(model.named_parameters())
    packed = [t for t in everything if any(t.startswith(name + ".") for name in second.streamed_names)]
    assert packed and all(arena.contains(everything[t]) for t in packed)


def test_a_replan_of_a_loaded_engine_moves_only_the_blocks_that_change_role():
    xs = inputs(torch.bfloat16, count=2)
    expected = reference_outputs(torch.bfloat16, xs)
    model = make_model(torch.bfloat16)
    blocks = len(plan_streaming(model, 0).block_sizes)
    first, second = plan_streaming(model, 3), plan_streaming(model, blocks - 1)
    bare = hook_count(model)
    engine = StreamingEngine(model, first, EngineOptions())
    engine.load("cpu")
    run(model, xs)  # two forwards: the profiler measured the second and removed its hooks
    hooks = hook_count(model)
    head = first.block_sizes[0][0]  # resident under both plans: it must not move at all
    head_weight = dict(model.named_parameters())[f"{head}.img_attn.qkv.weight"]
    head_pointer = head_weight.data_ptr()
    newly_streamed = set(second.streamed_names) - set(first.streamed_names)

    placed = engine.replan(second)  # loaded: in place, no unload
    assert engine.is_loaded and 0 < placed <= engine.plan.device_footprint_bytes
    assert head_weight.data_ptr() == head_pointer
    assert engine.load_stats.packed_bytes == sum(
        size for name, size in second.block_sizes if name in set(second.streamed_names) - set(first.streamed_names))
    arena = engine._arenas[torch.device("cpu")]
    params = dict(model.named_parameters())
    moved_down = [n for n in params if any(n.startswith(block + ".") for block in newly_streamed)]
    assert moved_down and all(arena.contains(params[n]) for n in moved_down)  # packed, their old copies dropped
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))

    engine.replan(first)  # and back: the packs are kept, nothing is packed again
    assert engine.load_stats.packed_bytes == 0
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))
    assert hook_count(model) == hooks  # no hook of the earlier plans is left behind
    engine.unload("cpu")
    assert hook_count(model) == bare
    engine.load("cpu")
    assert all(torch.equal(a, b) for a, b in zip(run(model, xs), expected))
    engine.unload("cpu")
