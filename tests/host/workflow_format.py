"""Convert a front-end (UI-format) workflow into ComfyUI's API format, the way the front-end does.

Widget values are matched to inputs in the node's ``/object_info`` order; link inputs come from the
``links`` table. Seed-like INT widgets carry an extra "control after generate" value in the UI file.
"""
from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONT_END_ONLY = {"Note", "MarkdownNote"}  # drawn by the front end, never sent to the server


def _is_widget(spec: Any) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _has_control_value(name: str, spec: Any) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))


def _widget_inputs(node: dict, info: dict) -> dict[str, Any]:
    values = list(node.get("widgets_values", []))
    linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    inputs: dict[str, Any] = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            if not _is_widget(spec) or name in linked or not values:
                continue
            inputs[name] = values.pop(0)
            if _has_control_value(name, spec):
                values.pop(0)  # "fixed" / "randomize": front-end state, not an input
    return inputs


def ui_to_api(ui: dict, object_info: dict) -> dict[str, dict]:
    """The API-format graph of ``ui`` (class_type and inputs of every node)."""
    links = {link[0]: link for link in ui["links"]}  # [id, from_node, from_slot, to_node, to_slot, type]
    graph: dict[str, dict] = {}
    for node in ui["nodes"]:
        if node["type"] in FRONT_END_ONLY:
            continue
        inputs = _widget_inputs(node, object_info[node["type"]])
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph
