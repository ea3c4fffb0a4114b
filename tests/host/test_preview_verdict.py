"""The plan preview tells what the load will do: on a real server (CPU), for budgets below, at and above the
minimum the preview reports, the preview warns that the budget will be raised to the minimum exactly when the
run does (a budget below the minimum is never refused: both run with the minimum plan and say so).

Each case is an example workflow with one loader swapped for its DisTorch streaming variant; the preview is
asked with that loader's inputs, as web/distorch.js asks it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from comfy_server import ComfyServer, execution_error, load_graph
from conftest import WORKFLOWS
from test_routes import call


@dataclass(frozen=True)
class Case:
    workflow: str  # API-format file in workflows/
    node: str  # id of the loader node the DisTorch variant replaces
    loader: str
    model_folder: str
    model_inputs: dict[str, str]


CASES = {
    "sd15-checkpoint": Case("sd_streaming.api.json", "1", "DisTorchCheckpointLoader", "checkpoints",
                            {"ckpt_name": "distorch-tiny-sd15.safetensors"}),
    "flux-diffusion-model": Case("flux_devices.api.json", "1", "DisTorchUNETLoader", "diffusion_models",
                                 {"unet_name": "distorch-tiny-flux.safetensors", "weight_dtype": "default"}),
    "clip-l-text-encoder": Case("flux_devices.api.json", "2", "DisTorchCLIPLoader", "text_encoders",
                                {"clip_name": "distorch-clip-l.safetensors", "type": "stable_diffusion"}),
}


def _streaming_inputs(virtual_vram_gb: float) -> dict[str, Any]:
    return {"compute_device": "cpu", "virtual_vram_gb": virtual_vram_gb, "donor_device": "cpu",
            "expert_allocation": ""}


def _preview(server: ComfyServer, case: Case, virtual_vram_gb: float) -> tuple[int, dict]:
    name = next(iter(case.model_inputs.values()))
    body = {"model_folder": case.model_folder, "model_names": [name], **case.model_inputs,
            **_streaming_inputs(virtual_vram_gb)}
    return call(server, "POST", "/distorch/preview", body)


def _preview_warns(server: ComfyServer, case: Case, virtual_vram_gb: float) -> bool:
    status, body = _preview(server, case, virtual_vram_gb)
    assert status == 200, body
    return body["warning"] is not None and "below the minimum" in body["warning"]


def _run_warns(server: ComfyServer, case: Case, virtual_vram_gb: float, seed: int) -> bool:
    graph = load_graph(WORKFLOWS / case.workflow)
    inputs = {**case.model_inputs, **_streaming_inputs(virtual_vram_gb)}
    graph[case.node] = {"class_type": case.loader, "inputs": inputs}
    for node in graph.values():
        node["inputs"].update({"seed": seed} if "seed" in node["inputs"] else {})
    log_start = len(server.log_path.read_text(errors="replace"))
    entry = server.run_prompt(graph)
    assert execution_error(entry) is None, execution_error(entry)  # never refused
    return "is below the minimum" in server.log_path.read_text(errors="replace")[log_start:]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_preview_warns_of_a_raised_budget_exactly_when_the_run_raises_it(
        server: ComfyServer, case: Case, fresh_seed: int) -> None:
    status, unlimited = _preview(server, case, 0.0)
    assert status == 200, unlimited
    # On CPU the compute budget is the model's bytes less the virtual VRAM, so this much may move off at most:
    most = unlimited["model_bytes"] - unlimited["minimum_budget_bytes"]
    expected = {most // 2: False, most: False, most + 1: True, most + 5_000_000: True}
    verdicts = {}
    for offset, moved in enumerate(expected):
        gb = moved / 1e9
        verdicts[moved] = _preview_warns(server, case, gb), _run_warns(server, case, gb, fresh_seed + offset)
    assert verdicts == {moved: (warns, warns) for moved, warns in expected.items()}
