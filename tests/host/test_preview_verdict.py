"""The plan preview never shows an error for a graph that runs, nor passes one that fails: on a real server (CPU),
for budgets below, at and above the minimum the preview reports, its verdict is what running the prompt does.

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


def _preview_plans(server: ComfyServer, case: Case, virtual_vram_gb: float) -> bool:
    status, body = _preview(server, case, virtual_vram_gb)
    assert status == 200 or (status == 400 and body["kind"] == "BudgetError"), body
    return status == 200


def _prompt_runs(server: ComfyServer, case: Case, virtual_vram_gb: float, seed: int) -> bool:
    graph = load_graph(WORKFLOWS / case.workflow)
    inputs = {**case.model_inputs, **_streaming_inputs(virtual_vram_gb)}
    graph[case.node] = {"class_type": case.loader, "inputs": inputs}
    for node in graph.values():
        node["inputs"].update({"seed": seed} if "seed" in node["inputs"] else {})
    entry = server.run_prompt(graph)
    error = execution_error(entry)
    assert error is None or error["exception_type"].endswith("BudgetError"), error
    return error is None


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_preview_verdict_is_the_run_verdict_below_at_and_above_the_minimum_budget(
        server: ComfyServer, case: Case, fresh_seed: int) -> None:
    status, unlimited = _preview(server, case, 0.0)
    assert status == 200, unlimited
    # On CPU the compute budget is the model's bytes less the virtual VRAM, so this much may move off at most:
    most = unlimited["model_bytes"] - unlimited["minimum_budget_bytes"]
    expected = {most // 2: True, most: True, most + 1: False, most + 5_000_000: False}
    verdicts = {}
    for offset, moved in enumerate(expected):
        gb = moved / 1e9
        verdicts[moved] = _preview_plans(server, case, gb), _prompt_runs(server, case, gb, fresh_seed + offset)
    assert verdicts == {moved: (plans, plans) for moved, plans in expected.items()}


def test_the_example_streaming_workflow_previews_without_an_error(server: ComfyServer) -> None:
    """The report that started this: the sd_streaming example ran, but its preview said the budget was too small."""
    loader = load_graph(WORKFLOWS / "sd_streaming.api.json")["1"]["inputs"]
    status, body = call(server, "POST", "/distorch/preview", {"model_folder": "checkpoints",
                                                              "model_names": [loader["ckpt_name"]], **loader})
    assert status == 200, body
    assert body["loaded_as"] == ["fp32"] and body["devices"][1]["blocks"] > 0
