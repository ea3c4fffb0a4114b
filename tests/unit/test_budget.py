"""distorch.budget: what a loader node's inputs mean as a placement plan."""
import pytest

from distorch.budget import StreamRequest, compute_shares, plan_request
from distorch.errors import AllocationError, BudgetError

GB = 10**9
BLOCKS = [(f"blocks.{i}", 1 * GB) for i in range(20)]  # 20 GB of blocks
OTHER = 1 * GB
TOTALS = {"cpu": 128 * GB, "cuda:0": 80 * GB, "cuda:1": 24 * GB}
AVAILABLE = list(TOTALS)


def plan(**kwargs):
    request = StreamRequest(**{"compute_device": "cuda:0", "virtual_vram_gb": 0.0, "donor_device": "cpu", **kwargs})
    return plan_request(request, BLOCKS, OTHER, TOTALS.__getitem__, AVAILABLE)


def test_virtual_vram_keeps_at_least_that_many_bytes_off_the_compute_device():
    p = plan(virtual_vram_gb=8.0)
    assert p.device_footprint_bytes <= 21 * GB - 8 * GB
    assert {store for _, store in p.streamed} == {"cpu"}


def test_zero_virtual_vram_streams_nothing():
    assert plan().streamed == ()


def test_the_expert_allocation_wins_over_the_one_number_form():
    p = plan(virtual_vram_gb=8.0, expert_allocation="cuda:0,15gb;cpu,*")
    assert 13 * GB < p.device_footprint_bytes <= 15 * GB


def test_an_explicit_donor_share_caps_that_store_and_the_last_store_takes_the_ring_overflow():
    p = plan(expert_allocation="cuda:0,10gb;cuda:1,3gb;cpu,*")
    held = p.bytes_by_store()
    assert held["cuda:1"] <= 3 * GB and held["cpu"] > 0
    assert p.device_footprint_bytes <= 10 * GB


def test_the_activation_reserve_keeps_vram_free_beside_the_weights():
    p = plan(expert_allocation="cuda:0,80gb;cpu,*", activation_reserve_bytes=70 * GB)
    assert p.device_footprint_bytes <= 10 * GB and p.streamed


def test_cpu_compute_with_a_cpu_donor_streams_from_the_host_arena():
    compute, budget, shares = compute_shares(StreamRequest("cpu", 5.0, "cpu"), 21 * GB, TOTALS.__getitem__, AVAILABLE)
    assert (compute, budget, shares) == ("cpu", 16 * GB, [("cpu", 5 * GB)])


def test_an_allocation_without_the_compute_device_is_refused():
    with pytest.raises(AllocationError, match="does not list the compute device"):
        plan(expert_allocation="cuda:1,10gb;cpu,*")


def test_a_budget_too_small_runs_with_the_minimum_and_says_so():
    p = plan(virtual_vram_gb=20.5)  # 0.5 GB left on the device: below non-block modules + a ring of 2 blocks
    assert p.budget_raised and p.raised_from_bytes == int(0.5 * GB)
    assert p.device_footprint_bytes == OTHER + 2 * GB and len(p.streamed) == len(BLOCKS)
