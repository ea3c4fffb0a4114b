"""The shipped example workflows run on a real server, and their UI and API files describe one graph.

The examples that name users' model files (flux1-dev.safetensors, ...) run on synthesized stand-ins with the
CPU changes of example_graphs.for_cpu (smaller latent, 2 steps, cpu devices, a small budget, sd3 in place of the
T5/UMT5 text-encoder types: its docstring says why and what that leaves untested).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from comfy_server import ComfyServer, execution_error, load_graph
from conftest import WORKFLOWS
from example_graphs import STAND_INS, for_cpu, is_shipped_example, streaming_models
from test_routes import scrape
from workflow_format import FRONT_END_ONLY, ui_to_api

API_FILES = sorted(WORKFLOWS.glob("*.api.json"))
SHIPPED = [p for p in API_FILES if is_shipped_example(load_graph(p))]
LATENT_NODES = {"EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo"}


def _ui_file(api_file: Path) -> Path:
    return api_file.with_name(api_file.name.replace(".api.json", ".json"))


def _with_seed(graph: dict, seed: int) -> dict:
    for node in graph.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return graph


def _latent(graph: dict) -> dict:
    return next(n["inputs"] for n in graph.values() if n["class_type"] in LATENT_NODES)


def _check_saved(path: Path, latent: dict) -> None:
    with Image.open(path) as saved:
        assert saved.size == (latent["width"], latent["height"])
        if latent.get("length", 1) > 1:  # a video. Not the exact frame count: the WEBP encoder merges identical
            assert getattr(saved, "n_frames", 1) >= 2  # consecutive frames, which random weights make


_loaded_files: set[str] = set()  # the model files of the previous example run, still loaded on the server


def _free_unless_shared(server: ComfyServer, graph: dict) -> None:
    """Unload the previous example's models unless this graph uses them too: two graphs' worth of models is too
    much for a CI machine, and reloading a shared model would only cost time."""
    files = {v for n in graph.values() for v in n["inputs"].values() if str(v).endswith(".safetensors")}
    if _loaded_files and not _loaded_files & files:
        server.free()
    _loaded_files.clear()
    _loaded_files.update(files)


def test_examples_exist_in_both_formats() -> None:
    assert {p.name for p in API_FILES} >= {
        "flux_devices.api.json", "sd_checkpoint.api.json", "flux_dev_streaming.api.json",
        "flux_dev_two_gpus.api.json", "wan21_t2v_streaming.api.json", "sdxl_checkpoint_streaming.api.json"}
    for api_file in API_FILES:
        assert _ui_file(api_file).is_file()


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name.split(".")[0])
def test_example_workflow_runs_and_saves_images_of_the_requested_size(
        server: ComfyServer, api_file: Path, fresh_seed: int) -> None:
    graph = _with_seed(for_cpu(load_graph(api_file)), fresh_seed)
    _free_unless_shared(server, graph)
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert images, f"no images in {entry['outputs']}"
    for image in images:
        _check_saved(server.output_dir / image["subfolder"] / image["filename"], _latent(graph))
    if api_file in SHIPPED:
        _, values = scrape(server)
        for model in streaming_models(graph):  # every streaming loader of the graph really streamed
            assert values.get(("distorch_model_streamed_bytes", f'model="{model}"'), 0) > 0, model


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name.split(".")[0])
def test_ui_format_file_converts_to_the_same_graph_as_the_api_file(api_file: Path, object_info: dict) -> None:
    ui = json.loads(_ui_file(api_file).read_text())
    api = {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in load_graph(api_file).items()}
    assert ui_to_api(ui, object_info) == api


@pytest.mark.parametrize("api_file", SHIPPED, ids=lambda p: p.name.split(".")[0])
def test_shipped_examples_name_users_files_at_real_sizes_with_the_automatic_budget(api_file: Path) -> None:
    graph = load_graph(api_file)
    files = {v for node in graph.values() for k, v in node["inputs"].items() if k.endswith("_name") and "." in str(v)}
    assert files and files <= STAND_INS.keys(), files - STAND_INS.keys()
    budgets = [n["inputs"]["virtual_vram_gb"] for n in graph.values() if n["class_type"].startswith("DisTorch")]
    assert budgets and set(budgets) == {"auto"}
    latent = _latent(graph)
    assert min(latent["width"], latent["height"]) >= 480 and latent.get("length", 33) >= 33


@pytest.mark.parametrize("api_file", SHIPPED, ids=lambda p: p.name.split(".")[0])
def test_shipped_examples_carry_a_note_with_the_card_size_and_what_to_expect(api_file: Path) -> None:
    notes = [n for n in json.loads(_ui_file(api_file).read_text())["nodes"] if n["type"] in FRONT_END_ONLY]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert "**Card" in text and "GB" in text and "**Expect:**" in text and "**File" in text
