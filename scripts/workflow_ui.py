#!/usr/bin/env python3
"""Write the front-end (UI-format) file of an example workflow from its API file, so the two never drift.

    .venv/bin/python scripts/workflow_ui.py workflows/flux_dev_streaming.api.json --note note.md

Starts a headless ComfyUI (scripts/comfy_server.py) for ``/object_info``, the order in which the front end lays
out each node's widgets, then writes ``<name>.json`` beside the API file: the same nodes, links and widget
values, laid out left to right by depth, plus a ``MarkdownNote`` holding ``--note`` (without ``--note`` the
note of the existing UI file is kept). tests/host/test_workflows.py converts the UI file back and checks it
equals the API file.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

NOTE_TYPE = "MarkdownNote"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, NODE_WIDTH, NOTE_WIDTH = 400, 360, 440
ROW_HEIGHT, NODE_HEADER, GAP = 24, 46, 40
DRAWING_HEIGHT = 200  # room for what web/distorch.js draws under a DisTorch loader (plan bars, timeline)


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _has_control_value(name: str, spec: list) -> bool:
    """Seed-like INT widgets carry a "control after generate" value in the UI file (see tests/host/workflow_format)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and bool(options.get("control_after_generate") or name in ("seed", "noise_seed"))


def _inputs(info: dict) -> list[tuple[str, list]]:
    sections = [info["input"].get(section, {}) for section in ("required", "optional")]
    return [(name, spec) for section in sections for name, spec in section.items()]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _depths(api: dict[str, dict]) -> dict[str, int]:
    """Column of each node: one past the deepest node it reads from."""
    depth: dict[str, int] = {}

    def visit(key: str) -> int:
        if key not in depth:
            sources = [v[0] for v in api[key]["inputs"].values() if _is_link(v)]
            depth[key] = 1 + max((visit(s) for s in sources), default=-1)
        return depth[key]

    for key in api:
        visit(key)
    return depth


def _widget_values(node: dict, info: dict) -> list:
    values = []
    for name, spec in _inputs(info):
        if not _is_widget(spec):
            continue
        if name not in node["inputs"]:
            raise SystemExit(f"{node['class_type']}: give widget {name!r} in the API file (the UI file stores all)")
        values.append(node["inputs"][name])
        if _has_control_value(name, spec):
            values.append("fixed")
    return values


def _node_height(node: dict, info: dict) -> int:
    rows = sum(1 for name, spec in _inputs(info) if _is_widget(spec) or _is_link(node["inputs"].get(name)))
    drawing = DRAWING_HEIGHT if node["class_type"].startswith("DisTorch") else 0
    return NODE_HEADER + ROW_HEIGHT * max(rows, len(info["output"])) + drawing


def api_to_ui(api: dict[str, dict], object_info: dict, note: str) -> dict:
    """The UI-format workflow of ``api`` (keys must be integer node ids), with a note node in front."""
    depth = _depths(api)
    order = sorted(api, key=lambda k: (depth[k], int(k)))
    links: list[list] = []
    outputs: dict[tuple[str, int], list[int]] = {}
    nodes, column_y = [], {}
    for position, key in enumerate(order):
        node, info = api[key], object_info[api[key]["class_type"]]
        inputs = []
        for name, spec in _inputs(info):
            value = node["inputs"].get(name)
            if _is_link(value):
                link_id = len(links) + 1
                source, slot = value
                links.append([link_id, int(source), slot, int(key), len(inputs), spec[0]])
                outputs.setdefault((source, slot), []).append(link_id)
                inputs.append({"name": name, "type": spec[0], "link": link_id})
        x = NOTE_WIDTH + 80 + depth[key] * COLUMN_WIDTH
        y = column_y.get(depth[key], 40)
        column_y[depth[key]] = y + _node_height(node, info) + GAP
        nodes.append({"id": int(key), "type": node["class_type"], "pos": [x, y],
                      "size": [NODE_WIDTH, _node_height(node, info)], "flags": {}, "order": position, "mode": 0,
                      "inputs": inputs, "outputs": [], "title": node["_meta"]["title"],
                      "properties": {"Node name for S&R": node["class_type"]},
                      "widgets_values": _widget_values(node, info)})
    for ui_node in nodes:
        info = object_info[ui_node["type"]]
        names = info.get("output_name") or info["output"]
        ui_node["outputs"] = [{"name": name, "type": kind, "links": outputs.get((str(ui_node["id"]), slot), []),
                               "slot_index": slot} for slot, (name, kind) in enumerate(zip(names, info["output"]))]
    note_id = max(int(k) for k in api) + 1
    nodes.append({"id": note_id, "type": NOTE_TYPE, "pos": [40, 40], "size": [NOTE_WIDTH, 560], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": "Read me",
                  "properties": {}, "widgets_values": [note], "color": "#432", "bgcolor": "#653"})
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))), "revision": 0,
            "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def existing_note(ui_path: Path) -> str | None:
    try:
        ui = json.loads(ui_path.read_text())
    except (OSError, ValueError):
        return None
    return next((n["widgets_values"][0] for n in ui["nodes"] if n["type"] == NOTE_TYPE), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("api_files", nargs="+", type=Path)
    ap.add_argument("--note", type=Path, help="markdown for the note node (one API file only)")
    args = ap.parse_args(argv)
    if args.note and len(args.api_files) != 1:
        raise SystemExit("--note goes with exactly one API file")
    from comfy_server import ComfyServer

    with ComfyServer() as server:
        object_info = server.get("/object_info")
    for api_path in args.api_files:
        ui_path = api_path.with_name(api_path.name.replace(".api.json", ".json"))
        note = args.note.read_text().strip() if args.note else existing_note(ui_path)
        if not note:
            raise SystemExit(f"{ui_path}: no note to keep; give --note")
        ui = api_to_ui(json.loads(api_path.read_text()), object_info, note)
        ui_path.write_text(json.dumps(ui, indent=1) + "\n")
        print(f"wrote {ui_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
