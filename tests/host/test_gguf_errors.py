"""Bad GGUF files through the DisTorch GGUF loaders over the HTTP API: an error naming the file (and the tensor at
fault), and the next prompt runs normally. The graphs end in the test-only probe node, which makes ComfyUI load
the model (load_models_gpu) without sampling anything."""
from __future__ import annotations

import re

import pytest

from comfy_server import ComfyServer, execution_error

STREAMING = {"compute_device": "cpu", "virtual_vram_gb": 0.0, "donor_device": "cpu", "expert_allocation": ""}
GOOD_UNET, GOOD_CLIP = "distorch-tiny-sd3-Q8_0.gguf", "distorch-t5-base-Q4_K.gguf"


def _unet_graph(seed: int, unet_name: str) -> dict:
    return {"1": {"class_type": "DisTorchUNETLoaderGGUF", "inputs": {"unet_name": unet_name, **STREAMING}},
            "2": {"class_type": "DistorchProbePlacement", "inputs": {"label": f"gguf {seed}", "model": ["1", 0]}}}


def _clip_graph(seed: int, clip_name: str) -> dict:
    loader = {"clip_name": clip_name, "type": "stable_audio", **STREAMING}
    return {"1": {"class_type": "DisTorchCLIPLoaderGGUF", "inputs": loader},
            "2": {"class_type": "DistorchProbePlacement", "inputs": {"label": f"gguf {seed}", "clip": ["1", 0]}}}


def _error(server: ComfyServer, graph: dict, node_type: str) -> dict:
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["node_type"] == node_type and error["exception_type"].endswith("GGUFError")
    return error


def _runs(server: ComfyServer, graph: dict) -> None:
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)


@pytest.mark.parametrize("unet_name, message", [
    ("distorch-bad-truncated.gguf", r"the file ends at byte \d+ but this Q8_0 tensor's data runs to byte \d+: the "
                                    r"file is truncated"),
    ("distorch-bad-iq2-xxs.gguf", r"GGML type IQ2_XXS \(id 16\) is not supported"),
    ("distorch-bad-type-99.gguf", r"unknown GGML type id 99"),
], ids=["truncated", "unsupported-type", "unknown-type"])
def test_a_broken_gguf_fails_naming_file_and_tensor_and_the_next_prompt_runs(server: ComfyServer, fresh_seed: int,
                                                                            unet_name: str, message: str) -> None:
    error = _error(server, _unet_graph(fresh_seed, unet_name), "DisTorchUNETLoaderGGUF")
    text = error["exception_message"]
    assert re.match(rf"tensor '[^']+' of \S*/{re.escape(unet_name)}: {message}", text), text
    _runs(server, _unet_graph(fresh_seed + 1, GOOD_UNET))


def test_an_llm_among_the_diffusion_models_fails_naming_file_and_architecture(server: ComfyServer,
                                                                              fresh_seed: int) -> None:
    error = _error(server, _unet_graph(fresh_seed, "distorch-bad-llama-arch.gguf"), "DisTorchUNETLoaderGGUF")
    assert "distorch-bad-llama-arch.gguf: its architecture 'llama' is a text encoder, not a diffusion model" \
        in error["exception_message"]
    _runs(server, _unet_graph(fresh_seed + 1, GOOD_UNET))


def test_a_diffusion_model_among_the_text_encoders_fails_naming_file_and_architecture(server: ComfyServer,
                                                                                      fresh_seed: int) -> None:
    error = _error(server, _clip_graph(fresh_seed, "distorch-bad-sd3-arch.gguf"), "DisTorchCLIPLoaderGGUF")
    assert "distorch-bad-sd3-arch.gguf: its architecture 'sd3' is a diffusion model, not a text encoder" \
        in error["exception_message"]
    _runs(server, _clip_graph(fresh_seed + 1, GOOD_CLIP))
