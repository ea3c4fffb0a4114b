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


def test_every_device_a_request_names_must_be_present_and_the_first_absent_one_is_named():
    import pytest

    from distorch.budget import require_request_devices
    from distorch.errors import DeviceError

    def request(**kwargs):
        return StreamRequest(**{"compute_device": "cuda:0", "virtual_vram_gb": 4.0, "donor_device": "cpu", **kwargs})

    require_request_devices(request(), AVAILABLE)
    for bad, absent in ((request(donor_device="cuda:7"), "cuda:7"), (request(compute_device="cuda:9"), "cuda:9"),
                        (request(expert_allocation="cuda:0,4gb;cuda:6,*"), "cuda:6")):
        with pytest.raises(DeviceError, match=f"'{absent}'"):
            require_request_devices(bad, AVAILABLE)
    require_request_devices(request(donor_device="cuda:7", expert_allocation="cuda:0,4gb;cpu,*"), AVAILABLE)


# --- the automatic budget ---------------------------------------------------------------------------------
from distorch.budget import parse_virtual_vram, plan_auto, worth_replanning  # noqa: E402


def auto(free_gb: float, reserve_gb: float = 0.0, **kwargs):
    request = StreamRequest(**{"compute_device": "cuda:0", "virtual_vram_gb": None, "donor_device": "cpu", **kwargs})
    return plan_auto(request, BLOCKS, OTHER, int(free_gb * GB), int(reserve_gb * GB), AVAILABLE)


def test_auto_is_the_absence_of_a_number_and_of_an_expert_allocation():
    assert StreamRequest("cuda:0", None, "cpu").auto
    assert not StreamRequest("cuda:0", 4.0, "cpu").auto
    assert not StreamRequest("cuda:0", None, "cpu", expert_allocation="cuda:0,8gb;cpu,*").auto


@pytest.mark.parametrize("text,value", [("auto", None), ("AUTO ", None), ("", None), (None, None), ("4", 4.0),
                                        (" 12.5 ", 12.5), (0.0, 0.0), (7, 7.0)])
def test_the_virtual_vram_input_reads_auto_or_a_number_of_gb(text, value):
    assert parse_virtual_vram(text) == value


@pytest.mark.parametrize("text", ["-1", "lots", "nan", "inf"])
def test_a_bad_virtual_vram_input_is_an_error_naming_it(text):
    with pytest.raises(AllocationError, match="virtual VRAM"):
        parse_virtual_vram(text)


def test_auto_keeps_everything_resident_when_the_model_and_the_activations_fit():
    p = auto(free_gb=30, reserve_gb=4)
    assert p.streamed == () and p.device_footprint_bytes == 21 * GB


def test_auto_streams_only_what_does_not_fit_beside_the_activation_reserve():
    p = auto(free_gb=16, reserve_gb=3)
    assert p.device_footprint_bytes + 3 * GB <= 16 * GB
    assert p.device_footprint_bytes + 3 * GB > 15 * GB  # within a block of what is free: nothing wasted
    assert p.activation_reserve_bytes == 3 * GB and {s for _, s in p.streamed} == {"cpu"}


def test_auto_below_the_minimum_runs_with_the_minimum():
    p = auto(free_gb=2, reserve_gb=1.5)
    assert p.budget_raised and p.device_footprint_bytes == OTHER + 2 * GB


def test_a_replan_happens_when_the_plan_no_longer_fits_or_moves_a_lot_of_weights_not_for_crumbs():
    model_bytes = 21 * GB
    current = auto(free_gb=16, reserve_gb=3)
    assert not worth_replanning(current, auto(free_gb=16, reserve_gb=3), 16 * GB, model_bytes)
    assert not worth_replanning(current, auto(free_gb=16.5, reserve_gb=3), int(16.5 * GB), model_bytes)
    assert worth_replanning(current, auto(free_gb=20, reserve_gb=3), 20 * GB, model_bytes)
    assert worth_replanning(current, auto(free_gb=12, reserve_gb=3), 12 * GB, model_bytes)


# --- a re-plan is priced: what the coming run saves against what moving the blocks costs ------------------------
from distorch.budget import ReplanCosts, replan_gain_seconds  # noqa: E402
from distorch.planner import StoreBudget, plan_placement  # noqa: E402

LINK = [StoreBudget("cpu", bandwidth_gbps=50.0)]  # 1 GB streamed = 20 ms a forward


def linked(budget_gb: float, seconds=None):
    return plan_placement(BLOCKS, OTHER, "cuda:0", int(budget_gb * GB), LINK, ring_slots=2, block_seconds=seconds)


def costs(compute_s: float, forwards: int = 20) -> ReplanCosts:
    return ReplanCosts(compute_s, forwards, stream_s_per_byte=1 / (10 * GB), upload_s_per_byte=1 / (20 * GB))


def test_the_gain_of_a_replan_is_the_run_s_transfer_saved_minus_the_blocks_moved():
    current, candidate = linked(12), linked(15)  # 3 blocks more resident: 60 ms less to stream per forward
    saved_per_forward = current.expected_transfer_seconds() - candidate.expected_transfer_seconds()
    was, now = set(current.streamed_names), set(candidate.streamed_names)  # the spread moves some blocks too
    moves = len(now - was) * GB / (10 * GB) + len(was - now) * GB / (20 * GB)
    gain = replan_gain_seconds(current, candidate, costs(compute_s=0.01, forwards=20))
    assert saved_per_forward == pytest.approx(0.06) and len(was - now) == len(now - was) + 3
    assert gain == pytest.approx(20 * saved_per_forward - moves)


def test_a_replan_that_saves_nothing_while_compute_dominates_is_not_made():
    current, candidate = linked(12), linked(15)  # 0.22 s and 0.16 s of transfer per forward
    assert worth_replanning(current, candidate, 15 * GB, 21 * GB, costs(compute_s=0.05))
    assert not worth_replanning(current, candidate, 15 * GB, 21 * GB, costs(compute_s=0.5))  # hidden under compute
    assert not worth_replanning(current, candidate, 15 * GB, 21 * GB, costs(compute_s=0.05, forwards=1))


def test_a_plan_that_no_longer_fits_is_replaced_whatever_it_costs():
    current, candidate = linked(15), linked(12)
    assert worth_replanning(current, candidate, 12 * GB, 21 * GB, costs(compute_s=10.0, forwards=1))


def test_without_a_measured_link_the_byte_threshold_decides():
    current = plan_placement(BLOCKS, OTHER, "cuda:0", 12 * GB, [StoreBudget("cpu")], ring_slots=2)
    candidate = plan_placement(BLOCKS, OTHER, "cuda:0", 15 * GB, [StoreBudget("cpu")], ring_slots=2)
    assert replan_gain_seconds(current, candidate, costs(compute_s=0.5)) is None
    assert worth_replanning(current, candidate, 15 * GB, 21 * GB, costs(compute_s=0.5))
