"""What the tests change in a shipped example workflow to run it on a CPU in CI, and nothing more.

The shipped graphs name the files users have (``flux1-dev.safetensors``, ...). The test server sees a folder
of symlinks with exactly those names (:func:`link_stand_ins`), each pointing at a synthesized model of the same
architecture that ComfyUI detects as that model (scripts/synth/examples.py), so the graph's model names stay as
shipped. :func:`for_cpu` then changes only what a CPU cannot run: the size of the latent, the number of steps,
``cuda:N`` devices, the streaming budget and the type of the two heavy text encoders.

**Heavy text encoders.** ComfyUI builds T5-XXL (DualCLIPLoader type ``flux``) and UMT5-XXL (CLIPLoader type
``wan``) from fixed configs: 24 blocks of width 4096, 4.7 B and 5.7 B parameters, whatever the file holds. A
file with fewer blocks does load (``clip missing: [...]`` is only a warning) but the model is still built full
size: the missing blocks are ``torch.empty`` memory (probed on ComfyUI 0.3.75 with only block 0 in the file: the
big matrices of block 5 read as zero pages, its layer-norm gain held NaN, so the output is NaN), every forward
still runs all 24 blocks (about 2.4 TFLOP for Flux's 256-token minimum, 4.7 TFLOP for Wan's 512: minutes per
prompt on 2 cores) and the streaming loader packs the missing blocks into its arena (GBs of RAM). So the tests
keep the loader nodes, their wiring and devices and change the encoder ``type`` to ``sd3``, which ComfyUI builds
from the files it is given: the T5/UMT5 file names point at CLIP-L, and ComfyUI's SD3 text encoder zero-pads
CLIP-L's context to T5's width 4096. So the diffusion models see conditioning of the real width; the pooled vector
is 2048 wide (CLIP-L + CLIP-G's zeros), which is why the Flux stand-in's vector_in takes 2048 instead of 768.
Limits: the T5/UMT5 code itself (tokenizer, relative attention) is not run here, and the streamed text encoder is
CLIP-L (12 blocks) where users stream T5 (24 bigger ones).

**Budget.** The shipped ``virtual_vram_gb`` is ``auto``: on a CPU the "VRAM" is all of the system's free RAM,
so ``auto`` streams nothing; the tests give a small budget instead so every streaming loader really streams.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

# file name in a shipped workflow -> (ComfyUI model folder, synthesized model name in scripts/synth/catalog.py)
STAND_INS: dict[str, tuple[str, str]] = {
    "flux1-dev.safetensors": ("diffusion_models", "flux_example"),
    "t5xxl_fp16.safetensors": ("text_encoders", "clip_l"),
    "clip_l.safetensors": ("text_encoders", "clip_l"),
    "ae.safetensors": ("vae", "flux_vae"),
    "wan2.1_t2v_14B_bf16.safetensors": ("diffusion_models", "wan_t2v_tiny"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "clip_l"),
    "wan_2.1_vae.safetensors": ("vae", "wan_vae"),
    "sd_xl_base_1.0.safetensors": ("checkpoints", "sdxl_small"),
}
TEXT_ENCODER_TYPES = {"flux": "sd3", "wan": "sd3"}  # see the module docstring
DEVICE_INPUTS = ("device", "compute_device", "donor_device")
CPU_BUDGET_GB = "0.01"  # below every model's minimum plan: each streaming loader streams its fewest blocks
IMAGE_SIDE, VIDEO_SIDE, VIDEO_FRAMES, STEPS = 64, 64, 5, 2
IMAGE_LATENTS = {"EmptyLatentImage", "EmptySD3LatentImage"}
VIDEO_LATENTS = {"EmptyHunyuanLatentVideo"}
STREAMING_MODEL_INPUTS = ("unet_name", "ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3")


def link_stand_ins(folder: Path, models: dict[str, Path]) -> Path:
    """``folder/<model folder>/<shipped file name>`` -> the stand-in; ``models``: synthesized name -> path."""
    for file_name, (kind, model) in STAND_INS.items():
        link = folder / kind / file_name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(models[model])
    return folder


def _cpu_inputs(class_type: str, inputs: dict[str, Any]) -> dict[str, Any]:
    out = dict(inputs)
    for name in DEVICE_INPUTS:
        if str(out.get(name, "")).startswith("cuda"):
            out[name] = "cpu"
    if out.get("virtual_vram_gb") == "auto":
        out["virtual_vram_gb"] = CPU_BUDGET_GB
    if out.get("type") in TEXT_ENCODER_TYPES and any(name.startswith("clip_name") for name in out):
        out["type"] = TEXT_ENCODER_TYPES[out["type"]]
    if class_type in IMAGE_LATENTS:
        out.update(width=min(out["width"], IMAGE_SIDE), height=min(out["height"], IMAGE_SIDE))
    if class_type in VIDEO_LATENTS:
        out.update(width=VIDEO_SIDE, height=VIDEO_SIDE, length=min(out["length"], VIDEO_FRAMES))
    if "steps" in out:
        out["steps"] = min(out["steps"], STEPS)
    return out


def for_cpu(graph: dict[str, dict]) -> dict[str, dict]:
    """The API-format ``graph`` as the CPU tests run it (see the module docstring); the input is not changed."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        node["inputs"] = _cpu_inputs(node["class_type"], node["inputs"])
    return graph


def cpu_widget_values(class_type: str, values: dict[str, Any]) -> dict[str, Any]:
    """The widget values of one node (name -> value) that :func:`for_cpu` changes, for the browser test."""
    changed = _cpu_inputs(class_type, values)
    return {name: value for name, value in changed.items() if values.get(name) != value}


def streaming_models(graph: dict[str, dict]) -> list[str]:
    """The model label of each DisTorch streaming loader in ``graph``, as /distorch/metrics labels it."""
    labels = []
    for node in graph.values():
        if node["class_type"].startswith("DisTorch"):
            inputs = node["inputs"]
            labels.append("+".join(str(inputs[k]) for k in STREAMING_MODEL_INPUTS if inputs.get(k)))
    return labels


def is_shipped_example(graph: dict[str, dict]) -> bool:
    """Whether ``graph`` names users' model files (the examples), rather than the tiny synthesized ones."""
    names = {v for node in graph.values() for v in node["inputs"].values() if isinstance(v, str)}
    return bool(names & STAND_INS.keys())
