"""distorch.planner: fewest streamed blocks, spread evenly, within budgets and store capacities."""
import pytest

from distorch.errors import BudgetError
from distorch.planner import PlacementPlan, StoreBudget, minimum_weight_budget, plan_placement, spread_evenly

CPU = [StoreBudget("cpu")]


def equal_blocks(count: int, size: int = 100) -> list[tuple[str, int]]:
    return [(f"blocks.{i}", size) for i in range(count)]


def streamed_indices(plan: PlacementPlan) -> list[int]:
    order = [name for name, _ in plan.block_sizes]
    return [order.index(name) for name, _ in plan.streamed]


def test_nothing_streams_when_the_budget_holds_the_whole_model():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 1050, CPU)
    assert plan.streamed == () and plan.ring_slots == 0 and plan.resident_bytes == 1050


def test_streams_the_fewest_blocks_that_fit():
    # 10 x 100 + 50 other, 3 slots of 100: 50 + 100 * (10 - k) + 300 <= 850 first holds at k = 5
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 850, CPU)
    assert len(plan.streamed) == 5
    assert plan.device_footprint_bytes == 850


def test_activation_reserve_counts_against_the_budget():
    without = plan_placement(equal_blocks(10), 50, "cuda:0", 800, CPU)
    with_reserve = plan_placement(equal_blocks(10), 50, "cuda:0", 800, CPU, activation_reserve_bytes=200)
    assert len(with_reserve.streamed) == len(without.streamed) + 2


def test_streamed_blocks_are_spread_evenly_not_taken_from_the_tail():
    plan = plan_placement(equal_blocks(40), 0, "cuda:0", 2000 + 300, CPU)
    indices = streamed_indices(plan)
    gaps = [b - a for a, b in zip(indices, indices[1:])]
    assert len(indices) == 20 and max(gaps) - min(gaps) <= 1
    assert indices != list(range(20, 40))


def test_before_a_measurement_streamed_bytes_follow_the_block_count():
    # Every block is taken to cost the same until a forward is measured: the share of streamed bytes never runs
    # ahead of the share of blocks run (the even spread by index streamed ~2x the bytes through the doubles).
    blocks = [(f"double.{i}", 300) for i in range(19)] + [(f"single.{i}", 150) for i in range(38)]
    plan = plan_placement(blocks, 1000, "cuda:0", 7000, CPU)
    chosen, sizes = streamed_indices(plan), [n for _, n in blocks]
    assert plan.pacing == "equal compute" and not plan.paced
    for upto in range(len(blocks) + 1):
        assert _bytes_before(chosen, sizes, upto) <= (upto / len(blocks) + 0.02) * plan.streamed_bytes + 1e-9
    assert plan.slot_bytes == 300 and plan.device_footprint_bytes <= 7000


def test_before_a_measurement_flux_streams_fewer_double_blocks_than_an_even_spread():
    blocks = [(f"b{i}", n) for i, n in enumerate(FLUX_SIZES)]
    prior = plan_placement(blocks, 0, "cuda:0", 16_000, CPU, ring_slots=2)
    doubles = sum(1 for name, _ in prior.streamed if int(name[1:]) < 19)
    even_doubles = sum(1 for i in spread_evenly(len(prior.streamed), 56) if i + 1 < 19)
    assert prior.pacing == "equal compute" and doubles < even_doubles


def test_where_pacing_would_cost_bytes_the_unmeasured_plan_spreads_by_index():
    # Nearly everything streams: the link is the bottleneck, and the even spread fits the budget with more than
    # a smallest block fewer bytes than the paced choice.
    blocks = [(f"b{i}", n) for i, n in enumerate(FLUX_SIZES)]
    for budget in range(2_500, 23_000, 250):
        plan = plan_placement(blocks, 100, "cuda:0", budget, CPU, ring_slots=2)
        even = _even_plan_bytes(blocks, 100, budget)
        assert plan.streamed_bytes <= even + 280, budget
        assert plan.pacing in ("equal compute", "index")
    assert plan_placement(blocks, 100, "cuda:0", 6_000, CPU, ring_slots=2).pacing == "index"


def _even_plan_bytes(blocks, other, budget):
    from distorch import planner
    sizes = [n for _, n in blocks]
    fitting = planner._first_fitting(sizes, 1, other, 2, budget)
    return sum(sizes[i] for i in fitting[1])


def test_spread_evenly_gaps_differ_by_at_most_one():
    for total in range(1, 30):
        for count in range(1, total + 1):
            picks = spread_evenly(count, total)
            gaps = [b - a for a, b in zip(picks, picks[1:])]
            assert len(set(picks)) == count and all(0 <= p < total for p in picks)
            assert not gaps or max(gaps) - min(gaps) <= 1


def test_head_blocks_stay_resident():
    plan = plan_placement(equal_blocks(10), 0, "cuda:0", 400, CPU, ring_slots=1, keep_head_blocks=2)
    assert {"blocks.0", "blocks.1"} <= set(plan.resident)


def test_everything_may_stream_without_a_head():
    plan = plan_placement(equal_blocks(10), 0, "cuda:0", 300, CPU, ring_slots=3, keep_head_blocks=0)
    assert len(plan.streamed) == 10 and plan.resident == ()


def test_a_budget_below_the_minimum_is_raised_to_the_smallest_plan_that_runs_never_refused():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 300, CPU, ring_slots=3)
    # smallest plan: no resident head, every block streamed: 50 other + 3 slots x 100
    assert plan.budget_raised and plan.raised_from_bytes == 300
    assert plan.device_footprint_bytes == 350 and len(plan.streamed) == 10
    message = plan.raised_message()
    assert "300 B" in message and "350 B" in message and "running with the minimum" in message


def test_the_head_block_is_kept_when_the_budget_allows_it():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 450, CPU, ring_slots=3)
    assert not plan.budget_raised and plan.resident == ("blocks.0",)


def test_the_head_block_streams_too_when_only_that_fits():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 420, CPU, ring_slots=3)
    assert not plan.budget_raised and plan.resident == () and plan.device_footprint_bytes == 350


def test_ring_has_the_requested_slots_each_the_size_of_the_largest_streamed_block():
    blocks = [(f"double.{i}", 300) for i in range(4)] + [(f"single.{i}", 100) for i in range(8)]
    sizes = dict(blocks)
    for budget in (1900, 1500, 1100):
        plan = plan_placement(blocks, 0, "cuda:0", budget, CPU, ring_slots=2)
        assert plan.ring_slots == 2 and plan.slot_bytes == max(sizes[name] for name in plan.streamed_names)


def test_store_capacity_is_respected():
    stores = [StoreBudget("cuda:1", capacity_bytes=300), StoreBudget("cpu")]
    plan = plan_placement(equal_blocks(10), 0, "cuda:0", 400, stores, ring_slots=1)
    assert plan.bytes_by_device()["cuda:1"] <= 300
    assert sum(1 for _, store in plan.streamed if store == "cuda:1") == 3


def test_stores_interleave_in_proportion_to_bandwidth():
    stores = [StoreBudget("cpu", bandwidth_gbps=50.0), StoreBudget("cuda:1", bandwidth_gbps=25.0)]
    plan = plan_placement(equal_blocks(13), 0, "cuda:0", 200, stores, ring_slots=1, keep_head_blocks=1)
    order = [store for _, store in plan.streamed]
    assert order.count("cpu") == 8 and order.count("cuda:1") == 4
    assert "cuda:1" in order[:3]  # both links busy from the start, not one store after the other


def test_too_little_store_capacity_raises():
    with pytest.raises(BudgetError, match="no store can hold"):
        plan_placement(equal_blocks(10), 0, "cuda:0", 400, [StoreBudget("cpu", capacity_bytes=250)], ring_slots=1)


def test_bytes_by_device_adds_up():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 800, CPU)
    held = plan.bytes_by_device()
    assert held["cuda:0"] == plan.resident_bytes + plan.ring_slots * plan.slot_bytes
    assert held["cpu"] == plan.streamed_bytes


def test_table_lists_devices_roles_and_transfer_time():
    plan = plan_placement(equal_blocks(10, size=10**9), 0, "cuda:0", 8 * 10**9, [StoreBudget("cpu", bandwidth_gbps=50.0)])
    table = plan.table()
    assert "cuda:0" in table and "store" in table and "compute" in table
    assert "expected transfer per forward: 100 ms" in table  # 5 GB at 50 GB/s


@pytest.mark.parametrize("sizes, ring_slots, head", [
    ([100] * 10, 3, 1), ([10, 900, 50, 50, 400, 30], 2, 1), ([500, 20, 20, 20], 1, 0), ([7], 2, 1), ([], 2, 1)])
def test_the_minimum_budget_is_exactly_where_planning_starts_to_succeed(sizes, ring_slots, head):
    blocks = [(f"blocks.{i}", n) for i, n in enumerate(sizes)]
    minimum = minimum_weight_budget(blocks, 40, ring_slots, head, activation_reserve_bytes=5)
    plan = plan_placement(blocks, 40, "cuda:0", minimum, CPU, ring_slots, head, activation_reserve_bytes=5)
    assert plan.device_footprint_bytes + 5 <= minimum
    assert not plan.budget_raised
    below = plan_placement(blocks, 40, "cuda:0", minimum - 1, CPU, ring_slots, head, activation_reserve_bytes=5)
    assert below.budget_raised and below.device_footprint_bytes + 5 == minimum


# --- pacing streamed bytes by measured compute time ----------------------------------------------------------
from distorch.planner import paced_choice  # noqa: E402

FLUX_SIZES = [680] * 19 + [280] * 38  # double blocks, then single blocks (bytes in arbitrary units)
FLUX_SECONDS = [3.3] * 19 + [2.8] * 38  # measured compute: a double block costs little more than a single one


def _bytes_before(chosen, sizes, upto):
    return sum(sizes[i] for i in chosen if i < upto)


def test_paced_choice_streams_bytes_in_step_with_compute_time():
    chosen = paced_choice(FLUX_SIZES, FLUX_SECONDS, head=1, target_bytes=10_000)
    streamed = sum(FLUX_SIZES[i] for i in chosen)
    assert 10_000 <= streamed <= 10_000 + 680
    total = sum(FLUX_SECONDS)
    for upto in range(len(FLUX_SIZES) + 1):
        share = sum(FLUX_SECONDS[:upto]) / total
        assert _bytes_before(chosen, FLUX_SIZES, upto) <= (share + 0.02) * 10_000 + 1e-9


def test_paced_choice_streams_fewer_big_cheap_blocks_than_an_even_spread():
    blocks = [(f"b{i}", n) for i, n in enumerate(FLUX_SIZES)]
    paced = plan_placement(blocks, 0, "cuda:0", 16_000, CPU, ring_slots=2, block_seconds=FLUX_SECONDS)
    even = [i for i in spread_evenly(len(paced.streamed), 56)]  # the same count spread by index (head kept)
    assert paced.paced and paced.pacing == "measured"
    assert sum(1 for name, _ in paced.streamed if int(name[1:]) < 19) < sum(1 for i in even if i + 1 < 19)
    assert paced.device_footprint_bytes <= 16_000
    assert abs(paced.streamed_bytes - _even_plan_bytes(blocks, 0, 16_000)) <= 700


def test_a_paced_plan_never_streams_more_than_an_even_spread_needs():
    # A small budget makes nearly every block stream; the pace can then not be kept, but the plan must still
    # keep as much resident as the budget holds (it once jumped to streaming everything).
    blocks = [(f"b{i}", n) for i, n in enumerate(FLUX_SIZES)]
    for budget in range(2_500, 23_000, 500):
        even = plan_placement(blocks, 100, "cuda:0", budget, CPU, ring_slots=2)
        paced = plan_placement(blocks, 100, "cuda:0", budget, CPU, ring_slots=2, block_seconds=FLUX_SECONDS)
        assert paced.paced and paced.device_footprint_bytes <= max(budget, even.device_footprint_bytes)
        assert paced.streamed_bytes <= even.streamed_bytes + 680, budget


def test_paced_choice_meets_its_target_even_where_the_pace_cannot_be_kept():
    target = sum(FLUX_SIZES) - 3 * 680
    chosen = paced_choice(FLUX_SIZES, FLUX_SECONDS, head=1, target_bytes=target)
    assert target <= sum(FLUX_SIZES[i] for i in chosen) <= target + 680
    assert 0 not in chosen and chosen == sorted(set(chosen))


def test_with_equal_blocks_and_equal_costs_pacing_spreads_evenly():
    chosen = paced_choice([100] * 20, [1.0] * 20, head=0, target_bytes=500)
    gaps = [b - a for a, b in zip(chosen, chosen[1:])]
    assert len(chosen) == 5 and max(gaps) - min(gaps) <= 1


def test_costs_of_the_wrong_length_fall_back_to_the_even_spread():
    plan = plan_placement(equal_blocks(10), 50, "cuda:0", 850, CPU, block_seconds=[1.0] * 3)
    assert not plan.paced and len(plan.streamed) == 5
