#!/usr/bin/env python3
"""Demo: run the bundled workflows on a real, headless ComfyUI with this plugin loaded.

    bash scripts/setup.sh && .venv/bin/python scripts/demo.py [--unet-device cuda:0] [--clip-device cpu] ...

Writes the tiny random-weight models if missing, starts ComfyUI (scripts/comfy_server.py), queues
workflows/flux_devices (diffusion model, CLIP and VAE each on a chosen device) and workflows/sd_streaming
(a DisTorch streaming loader), waits, and prints which loader put which model on which device, the
placement plan and streaming telemetry, the output files and the timings, then shuts the server down. The workflow file uses ``cpu`` everywhere so it runs on any
machine; the --*-device options override it (e.g. on a GPU machine).
"""
from __future__ import annotations

import argparse
import ast
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_hosts import newest_host  # noqa: E402

# The demo runs on the newest ComfyUI set up here (or DISTORCH_COMFY_ROOT): pick it before comfy_server reads it.
os.environ.update(newest_host().env())

from comfy_server import HOST, ROOT, ComfyServer, ServerError, ensure_models, execution_error, load_graph  # noqa: E402

WORKFLOWS = [ROOT / "workflows" / "flux_devices.api.json", ROOT / "workflows" / "sd_streaming.api.json"]
LOG_MARK = "distorch: "
STREAMING_MARK = "[DisTorch]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", type=Path, action="append", help="API-format workflow (repeatable; default: "
                    + ", ".join(p.name for p in WORKFLOWS) + ")")
    for role in ("unet", "clip", "vae"):
        ap.add_argument(f"--{role}-device", help=f"device for the {role.upper()} loader (default: as in the file)")
    ap.add_argument("--seed", type=int, default=None, help="sampler seed (default: random, so nothing is cached)")
    return ap.parse_args(argv)


def apply_overrides(graph: dict, args: argparse.Namespace) -> dict:
    """Set the device of each loader kind and the seed."""
    devices = {"UNETLoaderDevice": args.unet_device, "CLIPLoaderDevice": args.clip_device,
               "VAELoaderDevice": args.vae_device}
    for node in graph.values():
        if devices.get(node["class_type"]):
            node["inputs"]["device"] = devices[node["class_type"]]
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = args.seed if args.seed is not None else random.randrange(2**32)
    return graph


def placements(log_text: str) -> list[tuple[str, str, dict]]:
    """(core loader, output type, placement) from the plugin's log lines of this run."""
    found = []
    for line in log_text.splitlines():
        if LOG_MARK in line and " -> {" in line:
            head, _, body = line.split(LOG_MARK, 1)[1].partition(" -> ")
            loader, _, kind = head.partition(" ")
            found.append((loader, kind, ast.literal_eval(body)))
    return found


def streaming_lines(log_text: str) -> list[str]:
    """The streaming loaders' log records: plan tables (the rows follow their record line, in columns)
    and per-prompt telemetry lines."""
    lines: list[str] = []
    in_record = False
    for line in log_text.splitlines():
        if STREAMING_MARK in line:
            lines.append(line[line.index(STREAMING_MARK):])
            in_record = True
        elif in_record and ("  " in line.strip() or line.startswith("expected transfer")):
            lines.append("  " + line.rstrip())
        else:
            in_record = False
    return lines


def report(graph: dict, entry: dict, server: ComfyServer, seconds: float, log_start: int) -> None:
    log_text = server.log_path.read_text(errors="replace")[log_start:]
    print("\nWhat ran where:")
    for node_id, node in graph.items():
        device = node["inputs"].get("device")
        device = device or node["inputs"].get("compute_device")
        if device is not None:
            model = next(v for k, v in node["inputs"].items() if k.endswith("_name"))
            print(f"  node {node_id:>2} {node['class_type']:<24} {model:<34} device={device}")
    for loader, kind, where in placements(log_text):
        print(f"  {loader:<14} {kind:<6} load_device={where['load_device']:<7} "
              f"offload_device={where.get('offload_device', '-'):<7} weights at load: {where.get('weights_device', '-')}")
    streaming = streaming_lines(log_text)
    if streaming:
        print("\nDisTorch streaming (plan and telemetry):")
        print("\n".join("  " + line for line in streaming))
    print("\nOutputs:")
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            print(f"  node {node_id}: {server.output_dir / image['subfolder'] / image['filename']}")
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"] if "timestamp" in data}
    if "execution_start" in stamps and "execution_success" in stamps:
        print(f"\nExecution: {(stamps['execution_success'] - stamps['execution_start']) / 1000:.2f} s "
              f"(prompt round trip {seconds:.2f} s)")


def run_one(server: ComfyServer, path: Path, graph: dict) -> int:
    print(f"\n=== {path.name} ===")
    log_start = len(server.log_path.read_text(errors="replace"))
    t0 = time.perf_counter()
    try:
        entry = server.run_prompt(graph)
    except ServerError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if entry["status"]["status_str"] != "success":
        error = execution_error(entry) or {}
        print(f"demo: workflow failed in {error.get('node_type')}: {error.get('exception_message')}", file=sys.stderr)
        return 1
    report(graph, entry, server, seconds, log_start)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    ensure_models("tiny")
    print(f"models ready in {time.perf_counter() - t0:.1f} s")
    graphs = [(path, apply_overrides(load_graph(path), args)) for path in (args.workflow or WORKFLOWS)]
    t0 = time.perf_counter()
    with ComfyServer(log_path=ROOT / ".host" / "logs" / "demo-server.log",
                     output_dir=ROOT / ".host" / "demo-output") as server:
        print(f"{HOST.name} up at {server.url} in {time.perf_counter() - t0:.1f} s (log: {server.log_path})")
        for path, graph in graphs:
            if run_one(server, path, graph) != 0:
                return 1
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
