"""Streamed bytes split across independent paths by bandwidth; paths sharing a bottleneck are not summed."""
import pytest

from distorch.budget import StreamRequest, apply_topology, plan_request
from distorch.planner import StoreBudget, assign_stores, plan_placement
from distorch.topology import DonorMeasurement, build_topology

GB = 10**9
NVLINK = build_topology("cuda:0", 50.0, [DonorMeasurement("cuda:1", True, 150.0, 195.0)])  # independent
PCIE = build_topology("cuda:0", 50.0, [DonorMeasurement("cuda:1", True, 40.0, 52.0)])  # shared x16 link


def blocks(count, size=GB):
    return [(f"blocks.{i}", size) for i in range(count)]


def stores_for(topology, cuda1_cap=None):
    return apply_topology([StoreBudget("cuda:1", cuda1_cap), StoreBudget("cpu")], topology)


def test_independent_paths_split_bytes_in_proportion_to_their_bandwidth():
    order = assign_stores(blocks(40), stores_for(NVLINK))
    assert order.count("cuda:1") == 30 and order.count("cpu") == 10  # 150 : 50


def test_independent_paths_alternate_along_the_execution_order():
    order = assign_stores(blocks(8), stores_for(NVLINK))
    assert "cpu" in order[:4] and "cuda:1" in order[:2]


def test_stores_sharing_a_bottleneck_are_not_summed():
    plan = plan_placement(blocks(21), 0, "cuda:0", 3 * GB + 1 * GB, stores_for(PCIE), ring_slots=3)
    # 20 GB over one x16 link measured at 52 GB/s together: 385 ms whatever the split
    assert plan.streamed_bytes == 20 * GB
    assert plan.expected_transfer_seconds() == pytest.approx(20 / 52, rel=1e-6)


def test_independent_paths_take_the_slowest_groups_time_not_the_sum():
    plan = plan_placement(blocks(21), 0, "cuda:0", 4 * GB, stores_for(NVLINK), ring_slots=3)
    held = plan.bytes_by_store()
    assert held == {"cuda:1": 15 * GB, "cpu": 5 * GB}
    assert plan.expected_transfer_seconds() == pytest.approx(0.1)  # 15/150 = 5/50 = 100 ms, not 200


def test_a_full_fast_path_leaves_the_rest_to_the_other_group():
    order = assign_stores(blocks(20), stores_for(NVLINK, cuda1_cap=4 * GB))
    assert order.count("cuda:1") == 4 and order.count("cpu") == 16


def test_capacity_limited_donor_makes_the_host_path_the_slowest():
    plan = plan_placement(blocks(21), 0, "cuda:0", 4 * GB, stores_for(NVLINK, cuda1_cap=4 * GB), ring_slots=3)
    assert plan.bytes_by_store()["cuda:1"] == 4 * GB
    assert plan.expected_transfer_seconds() == pytest.approx(16 / 50)


def test_a_donor_store_slower_than_its_group_bounds_the_group_time():
    stores = [StoreBudget("cuda:1", None, 10.0, "pcie:cuda:0", 50.0), StoreBudget("cpu", None, 50.0, "pcie:cuda:0", 50.0)]
    plan = plan_placement(blocks(13), 0, "cuda:0", 4 * GB, stores, ring_slots=3)
    held = plan.bytes_by_store()
    assert held["cpu"] > held["cuda:1"] > 0  # inside the group by each path's own rate
    expected = max(plan.streamed_bytes / (50 * GB), held["cuda:1"] / (10 * GB))
    assert plan.expected_transfer_seconds() == pytest.approx(expected)


def test_the_table_shows_bytes_per_path_and_the_expected_time():
    plan = plan_placement(blocks(21), 0, "cuda:0", 4 * GB, stores_for(NVLINK), ring_slots=3)
    table = plan.table()
    assert "nvlink:cuda:1->cuda:0" in table and "pcie:cuda:0" in table
    assert "15.00 GB" in table and "5.00 GB" in table
    assert "expected transfer per forward: 100 ms (slowest of 2 independent path(s)" in table


def test_the_table_adds_up_paths_of_a_shared_group():
    plan = plan_placement(blocks(21), 0, "cuda:0", 4 * GB, stores_for(PCIE), ring_slots=3)
    table = plan.table()
    assert "path pcie:cuda:0 is shared by" in table and "20.00 GB at 52.0 GB/s = 385 ms" in table
    assert "expected transfer per forward: 385 ms (slowest of 1 independent path(s)" in table


def test_without_a_topology_the_table_shows_both_bounds():
    stores = [StoreBudget("cpu", None, 50.0), StoreBudget("cuda:1", None, 50.0)]
    table = plan_placement(blocks(21), 0, "cuda:0", 4 * GB, stores, ring_slots=3).table()
    assert "on independent links" in table and "on one shared link" in table


TOTALS = {"cpu": 256 * GB, "cuda:0": 80 * GB, "cuda:1": 80 * GB}


def request_plan(allocation, topology=None, count=40):
    request = StreamRequest("cuda:0", 0.0, "cpu", expert_allocation=allocation)
    return plan_request(request, blocks(count), 1 * GB, TOTALS.__getitem__, list(TOTALS), topology=topology)


def test_an_allocation_over_two_gpus_and_cpu_maps_to_a_capped_donor_and_an_uncapped_host_store():
    plan = request_plan("cuda:0,8gb;cuda:1,20gb;cpu,*")
    caps = {s.device: s.capacity_bytes for s in plan.stores}
    assert caps == {"cuda:1": 20 * GB, "cpu": None}
    held = plan.bytes_by_store()
    assert held["cuda:1"] <= 20 * GB and held["cpu"] > 0 and plan.device_footprint_bytes <= 8 * GB


def test_the_allocation_with_a_topology_splits_by_path_bandwidth_within_the_donor_cap():
    plan = request_plan("cuda:0,8gb;cuda:1,20gb;cpu,*", topology=NVLINK)
    held = plan.bytes_by_store()
    assert held["cuda:1"] == 20 * GB  # the NVLink path fills to its cap before the host gets 1/4 of the bytes
    assert {s.device: s.group for s in plan.stores} == {"cuda:1": "nvlink:cuda:1->cuda:0", "cpu": "pcie:cuda:0"}
    assert plan.expected_transfer_seconds() == pytest.approx(max(20 / 150, held["cpu"] / GB / 50))


def test_a_topology_for_another_compute_device_is_refused():
    other = build_topology("cuda:1", 50.0, [])
    with pytest.raises(ValueError, match="probed for cuda:1"):
        request_plan("cuda:0,8gb;cpu,*", topology=other)
