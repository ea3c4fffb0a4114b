"""Device-placement variants of ComfyUI's core loaders: ``UNETLoaderDevice``, ``CLIPLoaderDevice``, ...

Each variant is generated at import from the core node that this ComfyUI really has, so it has the
core node's inputs (re-read on every ``/object_info``, so new files and new core inputs appear), its
RETURN_TYPES/RETURN_NAMES, and one more required input, ``device``, listing the devices torch sees
here. A core ``device`` input (CLIP loaders: ``default``/``cpu``) is replaced by ours; when ours is
``cpu`` we pass ``cpu`` through the core path, so the core loader builds the model for the CPU.
The core loader runs unchanged, then :func:`comfy_adapter.place_on_device` retargets what it
returned; the device travels with the returned object, never through module state.

Defaults of ``device`` (what a freshly added node shows):
  * diffusion side (UNET, checkpoint, ControlNet) and VAE: the first GPU, else ``cpu``. The VAE
    follows the diffusion model because decoding on the CPU is slow and a VAE is small.
  * text encoders and CLIP vision: the last GPU when there are two or more (so they stay off the
    diffusion model's GPU), else ``cpu``: text encoders are large and run once per prompt.
  A checkpoint variant places all three of its outputs (MODEL, CLIP, VAE) on the one device.

An absent device (a workflow saved on a 2-GPU machine, opened on a 1-GPU one): the prompt is
accepted (``VALIDATE_INPUTS`` only rejects malformed names) and the node fails when it runs with a
``DeviceError`` that names the device and lists the available ones. We chose an error over a silent
or logged fallback: a fallback would move a 24 GB model onto a device nobody picked (often an
out-of-memory crash later, far from its cause), and the fix — pick a device in the widget — is
one click. Presence is checked at execution, where the error is shown on the node.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..distorch.devices import available_devices, canonical_device, require_device
from ..distorch.errors import DeviceError
from . import comfy_adapter

log = logging.getLogger("distorch")

CATEGORY = "distorch/loaders"
DEVICE_TOOLTIP = "Device whose memory holds this model while it computes (torch name: cpu, cuda:0, ...)."


@dataclass(frozen=True)
class LoaderSpec:
    """A core loader to wrap, and which default device its kind of model gets."""

    core: str
    display: str
    role: str  # "diffusion" | "vae" | "text_encoder" | "vision"


SPECS: tuple[LoaderSpec, ...] = (
    LoaderSpec("UNETLoader", "Load Diffusion Model (device)", "diffusion"),
    LoaderSpec("CheckpointLoaderSimple", "Load Checkpoint (device)", "diffusion"),
    LoaderSpec("CLIPLoader", "Load CLIP (device)", "text_encoder"),
    LoaderSpec("DualCLIPLoader", "DualCLIPLoader (device)", "text_encoder"),
    LoaderSpec("TripleCLIPLoader", "TripleCLIPLoader (device)", "text_encoder"),
    LoaderSpec("QuadrupleCLIPLoader", "QuadrupleCLIPLoader (device)", "text_encoder"),
    LoaderSpec("VAELoader", "Load VAE (device)", "vae"),
    LoaderSpec("CLIPVisionLoader", "Load CLIP Vision (device)", "vision"),
    LoaderSpec("ControlNetLoader", "Load ControlNet Model (device)", "diffusion"),
    LoaderSpec("DiffControlNetLoader", "Load ControlNet Model (diff) (device)", "diffusion"),
)

# Output types that are models to place; other outputs (none today) pass through untouched.
PLACED_TYPES = frozenset({"MODEL", "CLIP", "VAE", "CLIP_VISION", "CONTROL_NET"})


def default_device(role: str, devices: list[str] | None = None) -> str:
    """The device a new node of ``role`` shows (see the module docstring for why)."""
    devices = available_devices() if devices is None else devices
    accelerators = [d for d in devices if d != "cpu"]
    if role in ("text_encoder", "vision"):
        return accelerators[-1] if len(accelerators) >= 2 else "cpu"
    return accelerators[0] if accelerators else "cpu"


def variant_inputs(core_cls: type, role: str) -> dict[str, dict[str, Any]]:
    """The core node's inputs without its own ``device``, plus our required ``device`` (last)."""
    schema = comfy_adapter.input_schema(core_cls)
    for entries in schema.values():
        entries.pop("device", None)
    devices = available_devices()
    schema.setdefault("required", {})["device"] = (
        devices,
        {"default": default_device(role, devices), "tooltip": DEVICE_TOOLTIP},
    )
    return schema


def check_device_name(device: str) -> bool | str:
    """ComfyUI validation: True for a well-formed name (presence is checked at run time), else why not."""
    try:
        canonical_device(device)
    except DeviceError as error:
        return str(error)
    return True


def load_on_device(core_cls: type, return_types: tuple[str, ...], device: str, kwargs: dict[str, Any]) -> tuple:
    """Run the core loader, then place each model it returned on ``device``."""
    name = require_device(device)  # DeviceError naming the device and listing the present ones
    target = torch.device(name)
    option = comfy_adapter.device_option(core_cls)
    if option is not None:
        _, choices = option
        # The core's own cpu path builds the model for the CPU (dtype included); other devices retarget.
        kwargs["device"] = "cpu" if name == "cpu" and "cpu" in choices else choices[0]
    outputs = list(comfy_adapter.call_core(core_cls, kwargs))
    for index, (kind, value) in enumerate(zip(return_types, outputs)):
        if value is not None and kind in PLACED_TYPES:
            _, outputs[index] = comfy_adapter.place_on_device(value, target)
            log.info("distorch: %s %s -> %s", core_cls.__name__, kind, comfy_adapter.device_of(outputs[index]))
    return tuple(outputs)


def make_variant(spec: LoaderSpec, core_cls: type) -> type:
    """A classic ComfyUI node class wrapping ``core_cls`` with a ``device`` input."""
    return_types, return_names, tooltips = comfy_adapter.return_spec(core_cls)

    def input_types(cls: type) -> dict[str, dict[str, Any]]:
        return variant_inputs(core_cls, spec.role)

    def validate_inputs(cls: type, device: str) -> bool | str:
        # Naming `device` here makes ComfyUI skip its combo check, so an absent device reaches load().
        return check_device_name(device)

    def load(self: Any, device: str, **kwargs: Any) -> tuple:
        return load_on_device(core_cls, return_types, device, kwargs)

    attributes: dict[str, Any] = {
        "INPUT_TYPES": classmethod(input_types),
        "VALIDATE_INPUTS": classmethod(validate_inputs),
        "RETURN_TYPES": return_types,
        "FUNCTION": "load",
        "CATEGORY": CATEGORY,
        "DESCRIPTION": f"{spec.core} that loads the model for the chosen device.",
        "CORE_NODE": spec.core,
        "load": load,
    }
    if return_names:
        attributes["RETURN_NAMES"] = return_names
    if tooltips:
        attributes["OUTPUT_TOOLTIPS"] = tooltips
    return type(f"{spec.core}Device", (), attributes)


def build_variants() -> tuple[dict[str, type], dict[str, str]]:
    """Variants of every core loader this ComfyUI has; missing core nodes are skipped and logged."""
    classes: dict[str, type] = {}
    names: dict[str, str] = {}
    for spec in SPECS:
        core_cls = comfy_adapter.core_node(spec.core)
        if core_cls is None:
            log.info("distorch: core node %s not in this ComfyUI; no %sDevice", spec.core, spec.core)
            continue
        classes[f"{spec.core}Device"] = make_variant(spec, core_cls)
        names[f"{spec.core}Device"] = spec.display
    return classes, names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_variants()
log.info("distorch: %d device loaders; memory path: %s", len(NODE_CLASS_MAPPINGS), comfy_adapter.memory_path())
