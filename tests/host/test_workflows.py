"""The shipped example workflows run on a real server, and their UI and API files describe one graph."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from comfy_server import ComfyServer, execution_error, load_graph
from conftest import WORKFLOWS
from workflow_format import ui_to_api

API_FILES = sorted(WORKFLOWS.glob("*.api.json"))
LATENT_NODES = {"EmptyLatentImage", "EmptySD3LatentImage"}


def _with_seed(graph: dict, seed: int) -> dict:
    for node in graph.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return graph


def _requested_size(graph: dict) -> tuple[int, int]:
    latent = next(n["inputs"] for n in graph.values() if n["class_type"] in LATENT_NODES)
    return latent["width"], latent["height"]


def test_examples_exist_in_both_formats() -> None:
    assert {p.name for p in API_FILES} >= {"flux_devices.api.json", "sd_checkpoint.api.json"}
    for api_file in API_FILES:
        assert api_file.with_name(api_file.name.replace(".api.json", ".json")).is_file()


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name.split(".")[0])
def test_example_workflow_runs_and_saves_images_of_the_requested_size(
        server: ComfyServer, api_file: Path, fresh_seed: int) -> None:
    graph = _with_seed(load_graph(api_file), fresh_seed)
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images, f"no images in {entry['outputs']}"
    for image in images:
        path = server.output_dir / image["subfolder"] / image["filename"]
        with Image.open(path) as saved:
            assert saved.size == _requested_size(graph)


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name.split(".")[0])
def test_ui_format_file_converts_to_the_same_graph_as_the_api_file(api_file: Path, object_info: dict) -> None:
    ui = json.loads(api_file.with_name(api_file.name.replace(".api.json", ".json")).read_text())
    api = {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in load_graph(api_file).items()}
    assert ui_to_api(ui, object_info) == api
