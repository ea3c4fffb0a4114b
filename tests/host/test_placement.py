"""Where the models really are while a prompt executes, and what an absent device does."""
from __future__ import annotations

import pytest

from comfy_server import ComfyServer, ServerError, execution_error, load_graph
from conftest import WORKFLOWS


def _flux_graph(seed: int, unet_device: str = "cpu") -> dict:
    graph = load_graph(WORKFLOWS / "flux_devices.api.json")
    graph["7"]["inputs"]["seed"] = seed
    graph["1"]["inputs"]["device"] = unet_device
    return graph


def _diffusion_device(object_info: dict) -> str:
    """The first accelerator the server offers (the GPU machine), else cpu (CI)."""
    options = object_info["UNETLoaderDevice"]["input"]["required"]["device"][0]
    return next((d for d in options if d != "cpu"), "cpu")


def test_each_model_computes_on_the_device_its_loader_asked_for(
        server: ComfyServer, object_info: dict, fresh_seed: int) -> None:
    unet_device = _diffusion_device(object_info)
    graph = _flux_graph(fresh_seed, unet_device)
    graph["10"] = {"class_type": "DistorchProbePlacement",
                   "inputs": {"label": f"placement {fresh_seed}", "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0]}}
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    placement = entry["outputs"]["10"]["placement"][0]
    assert placement["model"]["load_device"] == unet_device
    assert placement["model"]["weights_device"] == unet_device  # after ComfyUI's own load_models_gpu
    for name in ("clip", "vae"):
        assert placement[name]["load_device"] == "cpu"
        assert placement[name]["offload_device"] == "cpu"
        assert placement[name]["weights_device"] == "cpu"
    assert placement["vae"]["vae_device"] == "cpu"


def test_absent_device_fails_the_prompt_naming_it_and_the_available_devices(
        server: ComfyServer, fresh_seed: int) -> None:
    entry = server.run_prompt(_flux_graph(fresh_seed, unet_device="cuda:7"))
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["node_type"] == "UNETLoaderDevice"
    assert error["exception_type"].endswith("DeviceError")
    assert "'cuda:7'" in error["exception_message"]
    assert "available: cpu" in error["exception_message"]


def test_prompt_after_an_absent_device_error_runs_normally(server: ComfyServer, fresh_seed: int) -> None:
    failed = server.run_prompt(_flux_graph(fresh_seed, unet_device="cuda:7"))
    assert failed["status"]["status_str"] == "error"
    entry = server.run_prompt(_flux_graph(fresh_seed + 100_000))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    assert entry["outputs"]["9"]["images"]


def test_malformed_device_name_is_rejected_when_the_prompt_is_queued(server: ComfyServer, fresh_seed: int) -> None:
    with pytest.raises(ServerError, match="invalid device name"):
        server.queue_prompt(_flux_graph(fresh_seed, unet_device="gpu one"))
