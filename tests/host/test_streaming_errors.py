"""Bad input to the DisTorch streaming loaders over the HTTP API: a clear error naming the bad part, and
the next prompt runs normally."""
from __future__ import annotations

import pytest

from comfy_server import ComfyServer, ServerError, execution_error, load_graph
from conftest import WORKFLOWS


def _graph(seed: int, **loader_inputs) -> dict:
    graph = load_graph(WORKFLOWS / "sd_streaming.api.json")
    graph["5"]["inputs"]["seed"] = seed
    graph["1"]["inputs"].update(loader_inputs)
    return graph


def _failed(server: ComfyServer, graph: dict) -> dict:
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["node_type"] == "DisTorchCheckpointLoader"
    return error


def test_a_malformed_allocation_is_refused_at_queue_time_naming_token_and_position(
        server: ComfyServer, fresh_seed: int) -> None:
    with pytest.raises(ServerError, match=r"unknown unit 'gx' at position 5"):
        server.queue_prompt(_graph(fresh_seed, expert_allocation="cpu,8gx;cpu,*"))


def test_an_allocation_larger_than_the_device_fails_naming_the_device(server: ComfyServer, fresh_seed: int) -> None:
    error = _failed(server, _graph(fresh_seed, expert_allocation="cpu,999tb"))
    assert error["exception_type"].endswith("BudgetError")
    assert "'cpu'" in error["exception_message"] and "has only" in error["exception_message"]


def test_an_absent_donor_device_fails_naming_it_before_the_checkpoint_is_read(
        server: ComfyServer, fresh_seed: int) -> None:
    error = _failed(server, _graph(fresh_seed, donor_device="cuda:5"))
    assert error["exception_type"].endswith("DeviceError")
    assert "'cuda:5'" in error["exception_message"] and "available: cpu" in error["exception_message"]
    # Not after loading the whole checkpoint: a wasted multi-GB load (whose freed memory the allocator kept)
    assert "call_core" not in "".join(error.get("traceback", [])), error.get("traceback")


def test_a_virtual_vram_too_large_runs_with_the_minimum_budget_and_warns_with_both_numbers(
        server: ComfyServer, fresh_seed: int) -> None:
    entry = server.run_prompt(_graph(fresh_seed, virtual_vram_gb="5.0"))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert "is below the minimum" in server.log_tail(400) and "running with the minimum" in server.log_tail(400)


def test_a_malformed_virtual_vram_is_refused_at_queue_time_naming_it(server: ComfyServer, fresh_seed: int) -> None:
    with pytest.raises(ServerError, match=r"virtual VRAM must be a finite number of GB >= 0.*'lots'"):
        server.queue_prompt(_graph(fresh_seed, virtual_vram_gb="lots"))


def test_the_prompt_after_each_kind_of_bad_input_runs_normally(server: ComfyServer, fresh_seed: int) -> None:
    for bad in ({"expert_allocation": "cpu,999tb"}, {"donor_device": "cuda:5"}, {"virtual_vram_gb": "5.0"}):
        server.run_prompt(_graph(fresh_seed, **bad))
        fresh_seed += 1
        entry = server.run_prompt(_graph(fresh_seed))
        assert entry["status"]["status_str"] == "success", execution_error(entry)
        fresh_seed += 1
