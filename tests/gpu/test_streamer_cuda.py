"""Streaming on a real GPU: bit-exact, no host sync in the steady state, really pinned, no leaks."""
import gc

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from distorch.engine import EngineOptions, StreamingEngine  # noqa: E402
from streaming_helpers import inputs, plan_streaming  # noqa: E402
from toy_models import make_model  # noqa: E402

DEVICE = torch.device("cuda", 0)


def resident_outputs(xs):
    model = make_model(torch.bfloat16).to(DEVICE)
    with torch.no_grad():
        return [model(x.to(DEVICE)) for x in xs]


def streaming(count, ring_slots=3, keep_head_blocks=1, **options):
    model = make_model(torch.bfloat16)
    plan = plan_streaming(model, count, ring_slots, keep_head_blocks)
    engine = StreamingEngine(model, plan, EngineOptions(ring_slots=ring_slots, **options))
    engine.load(DEVICE)
    return model, engine


def run(model, xs):
    with torch.no_grad():
        return [model(x.to(DEVICE)) for x in xs]


@pytest.mark.parametrize("split", [True, False], ids=["two_copy_streams", "one_copy_stream"])
@pytest.mark.parametrize("count,slots,head", [(1, 1, 1), (5, 2, 1), (5, 3, 1), (9, 3, 1), (10, 3, 0), (4, 3, 1)])
def test_streamed_outputs_equal_resident_outputs_on_cuda(count, slots, head, split):
    xs = inputs(torch.bfloat16, count=5)
    model, engine = streaming(count, slots, head, split_host_copies=split)
    outputs = run(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(outputs, resident_outputs(xs)))
    assert engine.misses == 0


def test_no_host_synchronisation_in_the_steady_state():
    xs = [x.to(DEVICE) for x in inputs(torch.bfloat16, count=3)]
    model, engine = streaming(5, 3, pin_host=True)
    with torch.no_grad():
        model(xs[0])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(xs[1])
            model(xs[2])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert engine.misses == 0


def test_the_arena_is_really_pinned():
    model, engine = streaming(5)
    arena = next(iter(engine._arenas.values()))
    assert engine.pinned_bytes == arena.nbytes > 0
    assert all(_registered(arena.segment(name)) for name in arena.block_names)
    engine.unload("cpu")
    assert engine.pinned_bytes == 0 and not any(_registered(arena.segment(name)) for name in arena.block_names)


def _registered(segment: torch.Tensor) -> bool:
    """Whether the driver holds this range page-locked (Tensor.is_pinned() looks at the start of the storage,
    which for a page-aligned view inside a larger allocation is not the registered range)."""
    from distorch.pinning import is_registered

    return is_registered(segment.data_ptr())


def test_the_activation_peak_of_a_real_forward_is_what_it_allocated_beyond_its_start():
    from distorch.activation_peak import ActivationPeakProbe

    class Temporary(torch.nn.Module):
        def forward(self, x):
            scratch = torch.empty(64 * 2**20, dtype=torch.uint8, device=DEVICE)  # freed when forward returns
            return x + scratch[:1].float()

    model = Temporary()
    probe = ActivationPeakProbe(DEVICE, model)
    x = torch.zeros(1, device=DEVICE)
    model(x)
    assert probe.peak_bytes is None
    model(x)
    assert 64 * 2**20 <= probe.peak_bytes <= 64 * 2**20 + 2**20
