"""Donor GPUs (needs 2 CUDA devices): bit-exact streaming from a donor's VRAM, peer and bounce routes, copies
that do not wait on the donor's default stream, independent workloads on two devices, a real topology probe."""
import dataclasses
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")

from distorch.engine import EngineOptions, StreamingEngine  # noqa: E402
from distorch.planner import StoreBudget  # noqa: E402
from distorch.topology import probe_topology  # noqa: E402
from streaming_helpers import inputs, plan_streaming  # noqa: E402
from toy_models import make_model  # noqa: E402

COMPUTE, DONOR = torch.device("cuda", 0), torch.device("cuda", 1)
PEER = torch.cuda.device_count() >= 2 and torch.cuda.can_device_access_peer(0, 1)


def donor_plan(model, count, stores=("cuda:1",)):
    """Stream ``count`` blocks, alternating over ``stores``."""
    plan = plan_streaming(model, count, 3)
    streamed = tuple((name, stores[i % len(stores)]) for i, (name, _) in enumerate(plan.streamed))
    return dataclasses.replace(plan, compute_device="cuda:0", streamed=streamed,
                               stores=tuple(StoreBudget(s) for s in stores))


def resident(xs, device=COMPUTE):
    model = make_model(torch.bfloat16).to(device)
    with torch.no_grad():
        return [model(x.to(device)) for x in xs]


def streamed(xs, count, route=None, stores=("cuda:1",)):
    model = make_model(torch.bfloat16)
    engine = StreamingEngine(model, donor_plan(model, count, stores), EngineOptions(ring_slots=3, donor_route=route))
    engine.load(COMPUTE)
    with torch.no_grad():
        out = [model(x.to(COMPUTE)) for x in xs]
    return out, engine


@pytest.mark.skipif(not PEER, reason="no peer access between cuda:0 and cuda:1")
@pytest.mark.parametrize("count", [1, 5, 9])
def test_donor_store_with_peer_access_is_bit_exact(count):
    xs = inputs(torch.bfloat16, count=4)
    out, engine = streamed(xs, count)
    assert all(torch.equal(a, b) for a, b in zip(out, resident(xs)))
    assert engine.misses == 0 and engine._arenas[DONOR].device == DONOR


@pytest.mark.parametrize("count", [1, 5, 9])
def test_donor_store_through_the_pinned_bounce_is_bit_exact(count, caplog):
    xs = inputs(torch.bfloat16, count=4)
    with caplog.at_level("INFO"):
        out, engine = streamed(xs, count, route="bounce")
    assert all(torch.equal(a, b) for a, b in zip(out, resident(xs)))
    assert "pinned host memory" in caplog.text
    engine.unload("cpu")  # drains and unpins the bounce ring


@pytest.mark.parametrize("route", [None, "bounce"])
def test_host_and_donor_stores_together_are_bit_exact(route):
    xs = inputs(torch.bfloat16, count=4)
    out, engine = streamed(xs, 8, route=route, stores=("cuda:1", "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(out, resident(xs)))
    assert set(engine._arenas) == {DONOR, torch.device("cpu")}


@pytest.mark.parametrize("route", [None, "bounce"])
def test_donor_copies_do_not_wait_on_the_donors_default_stream(route):
    if route is None and not PEER:
        pytest.skip("no peer access")
    xs = inputs(torch.bfloat16, count=2)
    model = make_model(torch.bfloat16)
    engine = StreamingEngine(model, donor_plan(model, 5), EngineOptions(ring_slots=3, donor_route=route))
    engine.load(COMPUTE)
    x = xs[0].to(COMPUTE)
    with torch.no_grad():
        model(x)
        torch.cuda.synchronize(COMPUTE)
        torch.cuda.synchronize(DONOR)
        # ~1 s of work on the donor's default stream, queued before the forward
        with torch.cuda.device(DONOR):
            torch.cuda._sleep(int(1.5e9))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        busy = not torch.cuda.default_stream(DONOR).query()
    forward_ms = start.elapsed_time(end)
    assert busy, "the donor's default stream finished before the forward: the check proves nothing"
    assert forward_ms < 200, f"the streamed forward took {forward_ms:.0f} ms: it waited on the donor's default stream"
    torch.cuda.synchronize(DONOR)


def test_independent_workloads_really_run_on_their_devices():
    xs = inputs(torch.bfloat16, count=2)
    a, b = make_model(torch.bfloat16).to(COMPUTE), make_model(torch.bfloat16).to(DONOR)
    assert {p.device for p in a.parameters()} == {COMPUTE} and {p.device for p in b.parameters()} == {DONOR}
    with torch.no_grad():
        ya, yb = a(xs[0].to(COMPUTE)), b(xs[0].to(DONOR))
    assert ya.device == COMPUTE and yb.device == DONOR
    assert torch.equal(ya.cpu(), yb.cpu())  # same weights, same kernels: the same result on either device
    # Both devices busy at once: work queued on cuda:1 does not serialise behind cuda:0's.
    torch.cuda.synchronize(COMPUTE), torch.cuda.synchronize(DONOR)
    t0 = time.perf_counter()
    for device in (COMPUTE, DONOR):
        with torch.cuda.device(device):
            torch.cuda._sleep(int(5e8))
    torch.cuda.synchronize(COMPUTE), torch.cuda.synchronize(DONOR)
    both = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.cuda.device(COMPUTE):
        torch.cuda._sleep(int(5e8))
    torch.cuda.synchronize(COMPUTE)
    one = time.perf_counter() - t0
    assert both < 1.5 * one


def test_the_probe_measures_what_exists(tmp_path):
    topology = probe_topology("cuda:0", ["cpu", "cuda:1"], tmp_path / "t.json")
    assert set(topology.links) == {"cpu", "cuda:1"}
    assert topology.links["cpu"].gbps > 0 and topology.links["cuda:1"].gbps > 0
    assert topology.links["cuda:1"].peer == PEER
    assert topology.effective_gbps(["cpu", "cuda:1"]) > 0
