"""Specification of the HTTP routes the front-end extension uses, on a real ComfyUI server."""
from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfy_server import execution_error, load_graph
from conftest import WORKFLOWS

ROOT = Path(__file__).resolve().parents[2]
FLUX = "distorch-tiny-flux.safetensors"


def call(server, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """(status, parsed JSON body) for any status, 4xx included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        if not text.startswith(b"{"):  # aiohttp's own 404/405 page: the route does not exist
            pytest.fail(f"{method} {path} -> {error.code}, not our route: nodes/__init__.py must import nodes.routes")
        return error.code, json.loads(text)


def file_tensor_bytes(path: Path) -> int:
    sys.path.insert(0, str(ROOT))  # the engine is importable without ComfyUI
    from distorch.plan_preview import tensor_bytes

    return tensor_bytes([path])


def flux_request(**overrides) -> dict:
    return {"model_folder": "diffusion_models", "model_name": FLUX, "compute_device": "cpu",
            "virtual_vram_gb": 0.0, "donor_device": "cpu", "expert_allocation": "", **overrides}


def test_devices_route_lists_cpu_with_its_memory(server):
    status, body = call(server, "GET", "/distorch/devices")
    assert status == 200
    cpu = next(d for d in body["devices"] if d["device"] == "cpu")
    assert cpu["total_bytes"] > 0 and 0 <= cpu["free_bytes"] <= cpu["total_bytes"]


def test_preview_of_tiny_flux_puts_every_byte_of_the_loaded_model_on_a_device(server, models):
    status, body = call(server, "POST", "/distorch/preview", flux_request())
    assert status == 200, body
    assert sum(body["bytes_by_device"].values()) == body["model_bytes"]
    assert [name for name in body["plan"]["resident"]] == ["double_blocks.0", "single_blocks.0"]
    # the file is bf16; ComfyUI loads it in fp32 on this CPU server, so the plan places twice the file's bytes
    assert body["loaded_as"] == ["fp32"] and body["file_bytes"] == file_tensor_bytes(models["flux_tiny"])
    assert body["model_bytes"] >= 2 * body["file_bytes"]


def test_preview_sizes_the_model_in_the_weight_dtype_the_loader_is_given(server):
    status, body = call(server, "POST", "/distorch/preview", flux_request(weight_dtype="fp8_e4m3fn"))
    assert status == 200 and body["loaded_as"] == ["fp8_e4m3fn"]
    assert body["model_bytes"] < body["file_bytes"]
    status, body = call(server, "POST", "/distorch/preview", flux_request(weight_dtype="int4"))
    assert status == 400 and "unknown weight_dtype 'int4'" in body["error"]


def test_routes_are_also_served_under_the_api_prefix_the_front_end_uses(server):
    status, body = call(server, "POST", "/api/distorch/preview", flux_request())
    assert status == 200 and body["files"] == [FLUX]


def test_preview_rejects_a_bad_allocation_with_400_naming_token_and_position(server):
    status, body = call(server, "POST", "/distorch/preview", flux_request(expert_allocation="cpu,8gx"))
    assert status == 400
    assert (body["token"], body["position"]) == ("gx", 5)
    assert "unknown unit 'gx' at position 5" in body["error"]


def test_preview_reports_an_unmet_budget_as_400_without_token(server):
    status, body = call(server, "POST", "/distorch/preview", flux_request(expert_allocation="cpu,1kb"))
    assert status == 400 and body["token"] is None and body["kind"] == "BudgetError"


@pytest.mark.parametrize("name", ["../checkpoints/distorch-tiny-sd15.safetensors", "/etc/passwd",
                                  "../../../../etc/passwd", "missing.safetensors"])
def test_preview_only_reads_files_listed_in_the_model_folder(server, name):
    status, body = call(server, "POST", "/distorch/preview", flux_request(model_name=name))
    assert status == 404 and name in body["error"]


def test_preview_refuses_folders_that_hold_no_streamable_model(server):
    status, body = call(server, "POST", "/distorch/preview", flux_request(model_folder="../.."))
    assert status == 404 and "model_folder" in body["error"]


def test_preview_rejects_a_body_that_is_not_json(server):
    call(server, "GET", "/distorch/devices")  # fails clearly if the routes are missing
    request = urllib.request.Request(server.url + "/distorch/preview", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400


def test_telemetry_route_answers_a_list_of_records(server):
    status, body = call(server, "GET", "/distorch/telemetry")
    assert status == 200 and isinstance(body["records"], list) and isinstance(body["available"], bool)


def test_the_front_end_extension_is_served_from_web_directory(server):
    with urllib.request.urlopen(server.url + "/extensions/comfyui-distorch/distorch.js", timeout=30) as response:
        assert response.status == 200
        assert "app.registerExtension" in response.read().decode()


# --- GET /distorch/metrics: a strict reader of the Prometheus text format 0.0.4 --------------------------------
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]Inf|NaN"
_SAMPLE = re.compile(rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? ({_NUMBER})")
_COMMENT = re.compile(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)")


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, str], float]]:
    """``(type per name, value per (name, label text))``; fails on any line that is not a HELP, a TYPE or a sample
    line, on a sample before its name's HELP and TYPE, on a counter not ending in _total, on a repeated series."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    helped, types, values = set(), {}, {}
    for line in text[:-1].split("\n"):
        comment = _COMMENT.fullmatch(line)
        if comment:
            kind, name, rest = comment.groups()
            if kind == "HELP":
                helped.add(name)
            else:
                assert rest in ("counter", "gauge") and name not in types, line
                types[name] = rest
            continue
        sample = _SAMPLE.fullmatch(line)
        assert sample, f"not a sample line: {line!r}"
        name, labels, value = sample.groups()
        assert name in helped and name in types, f"{name} has no HELP/TYPE before its samples"
        assert types[name] != "counter" or name.endswith("_total"), name
        assert (name, labels or "") not in values, f"repeated series {line!r}"
        values[(name, labels or "")] = float(value)
    return types, values


def scrape(server) -> tuple[dict[str, str], dict[tuple[str, str], float]]:
    with urllib.request.urlopen(server.url + "/distorch/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(response.read().decode("utf-8"))


def _streaming_prompt(server, seed: int) -> None:
    graph = load_graph(WORKFLOWS / "sd_streaming.api.json")
    graph["5"]["inputs"]["seed"] = seed
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", execution_error(entry)


def test_metrics_count_streaming_across_prompts_and_model_unloads(server, fresh_seed):
    model = 'model="distorch-tiny-sd15.safetensors"'
    _streaming_prompt(server, fresh_seed)
    types, first = scrape(server)
    _streaming_prompt(server, fresh_seed + 1)
    _, second = scrape(server)
    counters = [name for name, kind in types.items() if kind == "counter"]
    assert {"distorch_streamed_bytes_total", "distorch_copy_seconds_total", "distorch_stall_seconds_total",
            "distorch_misses_total", "distorch_forwards_total", "distorch_prompts_total"} <= set(counters)
    for name in ("distorch_streamed_bytes_total", "distorch_forwards_total", "distorch_prompts_total",
                 "distorch_copy_seconds_total"):
        assert second[(name, "")] > first[(name, "")], name
    assert second[("distorch_model_streamed_bytes", model)] > 0
    assert second[("distorch_model_resident_bytes", model)] > 0 and second[("distorch_live_engines", "")] >= 1
    assert ("distorch_pinned_host_bytes", "") in second  # 0 here: CPU compute pins nothing

    unload = urllib.request.Request(server.url + "/free", data=json.dumps({"unload_models": True}).encode(),
                                    headers={"Content-Type": "application/json"})
    urllib.request.urlopen(unload, timeout=30).close()  # ComfyUI's own route: the model leaves the compute device
    deadline = time.monotonic() + 30
    while scrape(server)[1][("distorch_model_resident_bytes", model)] > 0:
        assert time.monotonic() < deadline, "the model was not unloaded"
        time.sleep(0.2)
    _, after_unload = scrape(server)
    assert all(after_unload[(name, "")] == second[(name, "")] for name in counters)
