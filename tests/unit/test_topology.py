"""distorch.topology: shared vs independent paths from measurements, effective bandwidth, the probe cache."""
import json

import pytest
import torch

from distorch.donor import BOUNCE, PEER, choose_route, route_message
from distorch.registry import REGISTRY
from distorch.topology import (DonorMeasurement, Link, Topology, build_topology, classify_donor, concurrent_split,
                               probe_topology)


@pytest.fixture(autouse=True)
def fresh_registry():
    REGISTRY.topologies.clear()
    yield
    REGISTRY.topologies.clear()


def test_a_donor_whose_concurrent_total_reaches_the_sum_of_singles_is_independent():
    m = DonorMeasurement("cuda:1", peer=True, gbps=300.0, concurrent_gbps=340.0)  # >= 0.8 x 350
    assert classify_donor("cuda:0", 50.0, m) == "nvlink:cuda:1->cuda:0"


def test_a_donor_whose_concurrent_total_stays_near_one_link_shares_the_host_bottleneck():
    m = DonorMeasurement("cuda:1", peer=True, gbps=50.0, concurrent_gbps=54.0)  # PCIe peer into the same x16
    assert classify_donor("cuda:0", 53.0, m) == "pcie:cuda:0"


def test_without_peer_access_a_donor_always_shares_the_host_link():
    m = DonorMeasurement("cuda:1", peer=False, gbps=300.0, concurrent_gbps=350.0)
    assert classify_donor("cuda:0", 50.0, m) == "pcie:cuda:0"


def test_without_a_concurrent_measurement_the_donor_counts_as_shared():
    m = DonorMeasurement("cuda:1", peer=True, gbps=300.0, concurrent_gbps=None)
    assert classify_donor("cuda:0", 50.0, m) == "pcie:cuda:0"


def test_the_threshold_is_eighty_percent_of_the_sum():
    at = DonorMeasurement("cuda:1", True, 50.0, 80.0)
    below = DonorMeasurement("cuda:1", True, 50.0, 79.9)
    assert classify_donor("cuda:0", 50.0, at).startswith("nvlink")
    assert classify_donor("cuda:0", 50.0, below) == "pcie:cuda:0"


def test_effective_bandwidth_adds_independent_paths():
    t = build_topology("cuda:0", 50.0, [DonorMeasurement("cuda:1", True, 300.0, 345.0)])
    assert t.effective_gbps(["cpu", "cuda:1"]) == pytest.approx(350.0)
    assert t.effective_gbps(["cuda:1"]) == pytest.approx(300.0)


def test_effective_bandwidth_of_a_shared_group_is_its_concurrent_rate_not_the_sum():
    t = build_topology("cuda:0", 53.0, [DonorMeasurement("cuda:1", True, 50.0, 54.0)])
    assert t.group_gbps == {"pcie:cuda:0": 54.0}
    assert t.effective_gbps(["cpu", "cuda:1"]) == pytest.approx(54.0)
    assert t.effective_gbps(["cpu"]) == pytest.approx(53.0)  # one path alone: its own rate


def test_a_shared_group_without_a_concurrent_rate_uses_its_fastest_path():
    t = Topology("cuda:0", {"cpu": Link("cpu", "cuda:0", 53.0, False, "pcie:cuda:0"),
                            "cuda:1": Link("cuda:1", "cuda:0", 20.0, False, "pcie:cuda:0")})
    assert t.effective_gbps(["cpu", "cuda:1"]) == pytest.approx(53.0)


def test_two_independent_donors_and_the_host_all_add_up():
    t = build_topology("cuda:0", 50.0, [DonorMeasurement("cuda:1", True, 300.0, 345.0),
                                        DonorMeasurement("cuda:2", True, 200.0, 240.0)])
    assert t.effective_gbps(["cpu", "cuda:1", "cuda:2"]) == pytest.approx(550.0)


def test_concurrent_probe_sizes_copies_in_proportion_to_rates_so_both_end_together():
    host, donor = concurrent_split(1 << 30, 50.0, 450.0)
    assert host / 50.0 == pytest.approx(donor / 450.0, rel=1e-3)
    assert host % 256 == 0 and donor % 256 == 0


def fake_measure(calls):
    def measure(compute, donors):
        calls.append((compute, tuple(donors)))
        return 50.0, [DonorMeasurement(d, True, 300.0, 345.0) for d in donors]
    return measure


def test_the_probe_is_cached_in_a_json_file_keyed_by_machine(tmp_path):
    cache, calls = tmp_path / "topology.json", []
    first = probe_topology("cuda:0", ["cuda:1", "cpu"], cache, measure=fake_measure(calls), machine="m1")
    REGISTRY.topologies.clear()  # a new process: only the file remains
    again = probe_topology("cuda:0", ["cpu", "cuda:1"], cache, measure=fake_measure(calls), machine="m1")
    assert again == first and calls == [("cuda:0", ("cuda:1",))]
    assert "m1" in json.loads(cache.read_text())


def test_another_machine_does_not_reuse_the_cache(tmp_path):
    cache, calls = tmp_path / "topology.json", []
    probe_topology("cuda:0", ["cuda:1"], cache, measure=fake_measure(calls), machine="m1")
    REGISTRY.topologies.clear()
    probe_topology("cuda:0", ["cuda:1"], cache, measure=fake_measure(calls), machine="m2")
    assert len(calls) == 2
    assert set(json.loads(cache.read_text())) == {"m1", "m2"}


def test_a_corrupt_cache_costs_only_a_new_probe(tmp_path):
    cache, calls = tmp_path / "topology.json", []
    cache.write_text("{not json")
    t = probe_topology("cuda:0", ["cuda:1"], cache, measure=fake_measure(calls), machine="m1")
    assert calls and t.links["cuda:1"].group == "nvlink:cuda:1->cuda:0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_a_cpu_only_machine_gives_a_host_only_topology():
    t = probe_topology("cpu", ["cpu", "cuda:1"])
    assert list(t.links) == ["cpu"] and t.links["cpu"].gbps is None
    assert t.effective_gbps(["cpu", "cuda:1"]) == 0.0  # nothing measured, nothing promised


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="checks a machine without a second GPU")
def test_absent_donors_are_left_out_of_the_topology():
    t = probe_topology("cuda:0", ["cpu", "cuda:7"])
    assert "cuda:7" not in t.links


def test_donor_route_is_peer_when_available_and_bounces_otherwise():
    assert choose_route(True) == PEER and choose_route(False) == BOUNCE
    assert choose_route(True, force=BOUNCE) == BOUNCE
    with pytest.raises(ValueError):
        choose_route(False, force=PEER)


def test_the_fallback_is_said_in_the_log_line():
    line = route_message("cuda:0", "cuda:1", BOUNCE, peer_available=False)
    assert "no peer access" in line and "pinned host" in line and "capacity, not bandwidth" in line
    assert "peer-to-peer" in route_message("cuda:0", "cuda:1", PEER, peer_available=True)
