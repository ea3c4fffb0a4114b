"""Behaviour of web/distorch.js under Node, with stand-ins for ComfyUI's front-end modules (no browser).

The extension imports ``../../scripts/app.js`` and ``../../scripts/api.js`` as it does when ComfyUI serves it
from ``/extensions/comfyui-distorch/``; the harness builds that layout in a temporary folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

APP_STUB = """export const registered = [];
export const app = { graph: { _nodes: [] }, registerExtension: (e) => registered.push(e) };
"""
API_STUB = """export const requests = [], answers = [], listeners = {};
export const api = {
  addEventListener: (name, fn) => { listeners[name] = fn; },
  async fetchApi(route, options = {}) {
    requests.push({ route, method: options.method || "GET", body: options.body ? JSON.parse(options.body) : null });
    const answer = answers.shift();
    if (!answer || answer === "throw") throw new TypeError("Failed to fetch");
    return { ok: answer.status < 400, status: answer.status, json: async () => answer.body };
  },
};
"""


def test_javascript_parses_as_a_module():
    subprocess.run([NODE, "--experimental-default-type=module", "--check", str(ROOT / "web" / "distorch.js")],
                   check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("site")
    (site / "scripts").mkdir()
    (site / "scripts" / "app.js").write_text(APP_STUB)
    (site / "scripts" / "api.js").write_text(API_STUB)
    (site / "extensions" / "comfyui-distorch").mkdir(parents=True)
    shutil.copy(ROOT / "web" / "distorch.js", site / "extensions" / "comfyui-distorch" / "distorch.js")
    shutil.copy(Path(__file__).with_name("web_harness.mjs"), site / "harness.mjs")
    done = subprocess.run([NODE, str(site / "harness.mjs")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def texts(drawing: dict) -> str:
    """The drawn text as one string: the extension wraps long labels at word boundaries, never squeezes them."""
    return " ".join(t["text"] for t in drawing["texts"])


def test_a_new_node_asks_for_a_preview_of_its_model_and_inputs(report):
    (request,) = report["first"]["requests"]
    assert request["route"] == "/distorch/preview" and request["method"] == "POST"
    # weight_dtype too: it changes the dtype ComfyUI loads the model in, hence the bytes the plan places
    assert request["body"] == {"model_folder": "diffusion_models", "model_names": ["distorch-tiny-flux.safetensors"],
                               "compute_device": "cuda:0", "virtual_vram_gb": 4.0, "donor_device": "cpu",
                               "expert_allocation": "", "weight_dtype": "default"}


def test_the_preview_draws_one_labelled_bar_per_device(report):
    drawn = texts(report["first"]["drawing"])
    assert "DisTorch plan: 2.00 GB in fp32, 2 blocks" in drawn  # sized as ComfyUI will load it
    # sizes below 1 GB in MB, as in the console plan table
    assert "cuda:0: compute 1.20 GB (1 block) + ring 300.00 MB of 24.00 GB" in drawn
    assert "cpu: streams 800.00 MB (1 block) of 64.00 GB" in drawn
    assert report["first"]["drawing"]["height"] > 0


def test_rapid_input_changes_send_one_debounced_request_with_the_last_value(report):
    (request,) = report["error"]["requests"]
    assert request["body"]["expert_allocation"] == "cuda:0,8gx"


def test_a_bad_allocation_is_drawn_in_red_with_token_and_position(report):
    lines = report["error"]["drawing"]["texts"]
    assert all(line["color"] == "#ff5555" for line in lines)
    drawn = " ".join(line["text"] for line in lines)
    assert "unknown unit 'gx' at position 8" in drawn and "token 'gx' at 8" in drawn


def test_a_budget_raised_to_the_minimum_is_an_amber_warning_not_a_red_error(report):
    lines = report["warning"]["drawing"]["texts"]
    assert not [line for line in lines if line["color"] == "#ff5555"]  # the graph runs: nothing in red
    warned = " ".join(line["text"] for line in lines if line["color"] == "#ffb74d")
    assert "is below the minimum 1.50 GB (non-block modules 100.00 MB); running with the minimum" in warned
    assert "cuda:0: compute 1.20 GB (1 block) + ring 300.00 MB of 24.00 GB" in texts(report["warning"]["drawing"])


def test_the_automatic_budget_says_it_plans_for_the_vram_free_now(report):
    drawn = texts(report["warning"]["drawing"])
    assert "auto: planned for the 300.00 MB free now on cuda:0; each run re-plans with what is free then" in drawn


def test_an_unreachable_server_leaves_the_node_without_a_drawing(report):
    assert len(report["unreachable"]["requests"]) == 1
    assert report["unreachable"]["drawing"] == {"texts": [], "height": 0}


def test_after_a_prompt_the_timeline_shows_the_last_telemetry_record(report):
    assert [r["route"] for r in report["telemetry"]["requests"]] == ["/distorch/telemetry"]
    drawn = texts(report["telemetry"]["drawing"])
    assert "last prompt: 2 fwd, 0.500 s/fwd, 12.5 GB/s, overlap 90%" in drawn


def test_drawings_are_never_sent_as_widget_values(report):
    assert report["serialized"] == [False, False]
