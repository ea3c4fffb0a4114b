"""The graphs of tests/gpu/dynamic_vram_coexistence.py, how the DisTorch loader is asked for its budget, and what
the server log must say. Pure functions: no server, no torch.

One graph: a diffusion-model loader (core UNETLoader or our DisTorchUNETLoader), core text encoders (full:
DualCLIPLoader type flux = T5-XXL + CLIP-L; tiny: CLIPLoader with CLIP-L alone, which drives the tiny Flux),
core VAELoader (TAEF1), CLIPTextEncode for the prompt and a negative prompt, FluxGuidance, KSampler, VAEDecode,
and the probes (tests/host/probe_nodes/coexistence.py): one records each forward's batch, one reports the
latent's hash (and saves it), the decoded image and the server's state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

REPORT_NODE = "11"
POSITIVE = "a lighthouse on a cliff at dawn, volumetric light"
NEGATIVE = "blurry, low quality, watermark"


@dataclass(frozen=True)
class Models:
    """File names as ComfyUI lists them (models/<folder>/<name>)."""

    diffusion: str
    clip_l: str
    t5: str | None  # None: CLIP-L alone (the tiny Flux takes CLIP-L's 768-wide context)
    vae: str


FULL_MODELS = Models("distorch-flux1-dev-full.safetensors", "distorch-clip-l.safetensors",
                     "distorch-t5xxl-fp16.safetensors", "distorch-taef1.safetensors")
TINY_MODELS = Models("distorch-tiny-flux.safetensors", "distorch-clip-l.safetensors", None,
                     "distorch-taef1.safetensors")


def loader_node(kind: str, models: Models, ours_inputs: dict[str, Any]) -> dict[str, Any]:
    base = {"unet_name": models.diffusion, "weight_dtype": "default"}
    if kind == "core":
        return {"class_type": "UNETLoader", "inputs": base}
    return {"class_type": "DisTorchUNETLoader", "inputs": {**base, **ours_inputs}}


def text_encoder_node(models: Models) -> dict[str, Any]:
    if models.t5 is None:
        return {"class_type": "CLIPLoader", "inputs": {"clip_name": models.clip_l, "type": "stable_diffusion"}}
    return {"class_type": "DualCLIPLoader",
            "inputs": {"clip_name1": models.t5, "clip_name2": models.clip_l, "type": "flux"}}


def flux_graph(kind: str, models: Models, ours_inputs: dict[str, Any], cfg: float, steps: int, size: int,
               seed: int, label: str, nonce: int, save_path: str) -> dict[str, Any]:
    """The whole graph; `nonce` changes the forward probe's input, so the sampler runs again while the loaders
    are answered from ComfyUI's cache (as in a user's session)."""
    return {
        "1": loader_node(kind, models, ours_inputs),
        "2": text_encoder_node(models),
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": models.vae}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["2", 0]}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "8": {"class_type": "DistorchProbeForwards", "inputs": {"model": ["1", 0], "label": label, "nonce": nonce}},
        "9": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0, "model": ["8", 0], "positive": ["6", 0], "negative": ["5", 0], "latent_image": ["7", 0]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        REPORT_NODE: {"class_type": "DistorchProbeReport", "inputs": {
            "label": label, "samples": ["9", 0], "image": ["10", 0], "save_path": save_path}},
    }


def memory_graph(nonce: int) -> dict[str, Any]:
    return {"1": {"class_type": "DistorchProbeMemory", "inputs": {"nonce": nonce}}}


def missing_inputs(graph: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Node types the server lacks and required inputs a graph leaves out: a clear message instead of a 400."""
    problems = []
    for node in graph.values():
        info = object_info.get(node["class_type"])
        if info is None:
            problems.append(f"{node['class_type']}: not registered on this server")
            continue
        for name in info.get("input", {}).get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"{node['class_type']}.{name}: required, not given")
    return problems


# --------------------------------------------------------------------------------------------------
# the DisTorch loader's budget: auto where this checkout's node offers it, else a fixed number
# --------------------------------------------------------------------------------------------------
AUTO_VALUE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:=|:|means|for)\s*auto", re.IGNORECASE)


def ours_budget_inputs(node_info: dict[str, Any], wanted: str, fallback_gb: float) -> tuple[dict[str, Any], str]:
    """(inputs, how they ask). `wanted` "auto": a combo input offering "auto" gets it; else a number the
    virtual_vram_gb tooltip names as auto ("0 = auto", "-1 means auto"); else `fallback_gb`, said so."""
    if wanted != "auto":
        return {"virtual_vram_gb": float(wanted)}, f"fixed {float(wanted):g} GB (asked)"
    inputs = {**node_info.get("input", {}).get("required", {}), **node_info.get("input", {}).get("optional", {})}
    for name, spec in inputs.items():
        if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], list) and "auto" in spec[0]:
            return {name: "auto"}, f"auto ({name}='auto')"
    vv = inputs.get("virtual_vram_gb")
    options = vv[1] if isinstance(vv, (list, tuple)) and len(vv) > 1 and isinstance(vv[1], dict) else {}
    if str(options.get("default", "")).strip().lower() == "auto":  # a text input whose default is auto
        return {"virtual_vram_gb": "auto"}, "auto (virtual_vram_gb='auto', the node's default)"
    match = AUTO_VALUE.search(str(options.get("tooltip", "")))
    if match:
        return {"virtual_vram_gb": float(match.group(1))}, f"auto (virtual_vram_gb={match.group(1)}, per its tooltip)"
    return {"virtual_vram_gb": fallback_gb}, f"fixed {fallback_gb:g} GB (this checkout's node offers no auto budget)"


# --------------------------------------------------------------------------------------------------
# the server log
# --------------------------------------------------------------------------------------------------
PLAN_START = re.compile(r"\[DisTorch\] \S+: compute on ")
MEMORY_PATH = re.compile(r"memory path|dynamic vram|classic", re.IGNORECASE)


def plan_tables(log: str) -> list[list[str]]:
    """Every plan table the loaders printed: from its "[DisTorch] <model>: compute on" line to its "total" row."""
    tables, current = [], None
    for line in log.splitlines():
        if PLAN_START.search(line):
            current = [line]
            tables.append(current)
        elif current is not None:
            current.append(line)
            if line.startswith("total") or len(current) > 40:
                current = None
    return tables


def log_findings(log: str) -> dict[str, Any]:
    """What the checks need from the log: plan tables, a [DisTorch] line naming the memory path, and whether a
    plan table itself names it."""
    tables = plan_tables(log)
    statements = [ln.strip() for ln in log.splitlines() if "[DisTorch]" in ln and MEMORY_PATH.search(ln)]
    in_table = [t for t in tables if any(MEMORY_PATH.search(ln) for ln in t)]
    return {"plan_tables": len(tables), "plan_table_example": tables[0][:8] if tables else None,
            "memory_path_statements": statements[:3], "plan_tables_naming_memory_path": len(in_table)}
