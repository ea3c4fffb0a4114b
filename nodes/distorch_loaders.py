"""DisTorch loader nodes: a core loader's model, with part of its weights streamed to the compute device.

Each node keeps the core loader's inputs (derived at import, so new core inputs appear) and adds
`compute_device`, `virtual_vram_gb` (`auto`, the default: use what is free on the compute device at each
sampling run; or GB, 1e9 bytes, of weights to keep off the compute device), `donor_device` (where those weights
live: `cpu` = pinned host RAM, or another GPU) and `expert_allocation` (e.g. `cuda:0,8gb;cpu,*`; when not empty
it wins over both). The plan is printed as a table, with the memory path ComfyUI runs.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from ..distorch.allocation import parse_allocation
from ..distorch.budget import (AUTO, StreamRequest, compute_shares, parse_virtual_vram, plan_auto, plan_request,
                              require_request_devices)
from ..distorch.errors import AllocationError
from ..distorch.devices import available_devices, default_pin_cap, device_total_memory
from ..distorch.engine import EngineOptions
from ..distorch.layout import layout_model
from ..distorch.planner import PlacementPlan
from ..distorch.topology import Topology, probe_topology
from . import comfy_adapter
from .auto_budget import AutoBudget, default_reserve
from .device_loaders import check_device_name
from .streaming_patcher import StreamingModelPatcher

log = logging.getLogger("distorch")
CATEGORY = "distorch/streaming"

# the core loaders' file inputs, in input order: they name the streamed model in metrics and logs
MODEL_FILE_INPUTS = ("unet_name", "ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3")
# core node -> (our node id, display name, which output is streamed and how to reach its ModelPatcher)
VARIANTS: dict[str, tuple[str, str, int, str]] = {
    "UNETLoader": ("DisTorchUNETLoader", "Load Diffusion Model (DisTorch streaming)", 0, "model"),
    "CheckpointLoaderSimple": ("DisTorchCheckpointLoader", "Load Checkpoint (DisTorch streaming)", 0, "model"),
    "CLIPLoader": ("DisTorchCLIPLoader", "Load CLIP (DisTorch streaming)", 0, "clip"),
    "DualCLIPLoader": ("DisTorchDualCLIPLoader", "DualCLIPLoader (DisTorch streaming)", 0, "clip"),
    "TripleCLIPLoader": ("DisTorchTripleCLIPLoader", "TripleCLIPLoader (DisTorch streaming)", 0, "clip"),
}


def streaming_inputs() -> dict[str, tuple]:
    devices = available_devices()
    compute_default = next((d for d in devices if d != "cpu"), "cpu")
    return {
        "compute_device": (devices, {"default": compute_default,
                                     "tooltip": "GPU that runs the model; streamed weights are copied here"}),
        "virtual_vram_gb": ("STRING", {"default": AUTO, "multiline": False,
                                       "tooltip": "auto: weights use the VRAM that is free at each sampling run, "
                                                  "minus what that run's activations need; or a number: GB (1e9 "
                                                  "bytes) of weights kept off the compute device"}),
        "donor_device": (devices, {"default": "cpu",
                                   "tooltip": "where the off-device weights live: cpu = pinned RAM, or a GPU"}),
        "expert_allocation": ("STRING", {"default": "", "multiline": False,
                                         "tooltip": "e.g. cuda:0,8gb;cpu,* or cuda:0,25%;cpu,75%; wins when set"}),
    }


def validate_streaming_inputs(compute_device: str, donor_device: str, expert_allocation: str,
                              virtual_vram_gb: str = AUTO) -> bool | str:
    for device in (compute_device, donor_device):
        verdict = check_device_name(device)
        if verdict is not True:
            return verdict
    try:
        parse_virtual_vram(virtual_vram_gb)
    except AllocationError as error:
        return str(error)
    if (expert_allocation or "").strip():
        try:
            parse_allocation(expert_allocation)
        except AllocationError as error:
            return str(error)
    return True


def request_from(kwargs: dict[str, Any]) -> StreamRequest:
    """The streaming inputs popped from a loader's kwargs, every device they name checked present (before the
    loader reads its file: a device that is not there would otherwise fail only after the whole load)."""
    request = StreamRequest(
        compute_device=kwargs.pop("compute_device"),
        virtual_vram_gb=parse_virtual_vram(kwargs.pop("virtual_vram_gb", AUTO)),
        donor_device=kwargs.pop("donor_device"),
        expert_allocation=kwargs.pop("expert_allocation", "") or "",
    )
    require_request_devices(request)
    return request


def plan_for_module(root: torch.nn.Module, request: StreamRequest) -> PlacementPlan:
    layout = layout_model(root)
    topology = link_topology(request, layout.total_bytes)
    return plan_request(request, layout.block_sizes, layout.other_bytes, device_total_memory, topology=topology)


def link_topology(request: StreamRequest, model_bytes: int) -> Topology | None:
    """Measured links from the stores to a GPU compute device (probed once per process); None on CPU."""
    if not request.compute_device.startswith("cuda"):
        return None
    if request.auto:
        return probe_topology(request.compute_device, [request.donor_device])
    compute, _, shares = compute_shares(request, model_bytes, device_total_memory)
    return probe_topology(compute, [device for device, _ in shares])


def auto_budget_for(root: torch.nn.Module, request: StreamRequest, extra_reserve_bytes: int = 0) -> AutoBudget:
    """What the automatic budget re-plans with at each load: the model's layout, its links, a first reserve
    (``extra_reserve_bytes``: VRAM the model needs beside its activations, e.g. a GGUF dequantization scratch)."""
    layout = layout_model(root)
    return AutoBudget(request, tuple(layout.block_sizes), layout.other_bytes, layout.total_bytes,
                      link_topology(request, layout.total_bytes), default_reserve(root) + extra_reserve_bytes,
                      extra_reserve_bytes=extra_reserve_bytes)


def model_label(inputs: dict[str, Any]) -> str | None:
    """The model file(s) a loader node was given, e.g. ``clip_l.safetensors+t5xxl.safetensors``."""
    files = [str(inputs[key]) for key in MODEL_FILE_INPUTS if inputs.get(key)]
    return "+".join(files) or None


def make_streaming(patcher: Any, request: StreamRequest, options: EngineOptions | None = None,
                   name: str | None = None, extra_reserve_bytes: int = 0) -> StreamingModelPatcher:
    """Wrap a freshly loaded ModelPatcher so its model streams by the requested plan (engine options: the
    defaults with the request's ring, unless given; ``name``: what metrics call the model). With the automatic
    budget the plan printed now is for the VRAM free now; the model re-plans when it is loaded for sampling
    (StreamingModelPatcher)."""
    if comfy_adapter.is_dynamic_patcher(patcher):
        log.info("[DisTorch] %s came with ComfyUI's Dynamic VRAM patcher; DisTorch streams it through its own "
                 "ModelPatcher subclass instead, beside Dynamic VRAM managing the other models",
                 type(patcher.model).__name__)
    auto = None
    if request.auto:
        auto = auto_budget_for(patcher.model, request, extra_reserve_bytes)
        free = comfy_adapter.free_vram(torch.device(request.compute_device))
        plan = plan_auto(request, auto.blocks, auto.other_bytes, free, auto.reserve_bytes, topology=auto.topology)
        heading = f"automatic budget, planned for {free / 1e9:.2f} GB free now; re-planned at each sampling run"
    else:
        reserve = request.activation_reserve_bytes or default_reserve(patcher.model)
        request = dataclasses.replace(request, activation_reserve_bytes=reserve + extra_reserve_bytes)
        plan = plan_for_module(patcher.model, request)
        heading = f"virtual_vram_gb {request.virtual_vram_gb}" if not request.expert_allocation.strip() else \
            f"allocation {request.expert_allocation.strip()}"
    log.info("[DisTorch] %s: compute on %s, %s; %s\n%s", type(patcher.model).__name__, request.compute_device,
             heading, comfy_adapter.memory_path_line(), plan.table())
    if plan.budget_raised:
        log.warning("[DisTorch] %s", plan.raised_message())
    options = options or EngineOptions(ring_slots=request.ring_slots, host_pin_cap_bytes=default_pin_cap())
    return StreamingModelPatcher.wrap(patcher, plan, options, torch.device(request.compute_device), name, auto)


def _stream_output(outputs: tuple, index: int, kind: str, request: StreamRequest, name: str | None) -> tuple:
    outputs = list(outputs)
    target = outputs[index]
    if kind == "model":
        outputs[index] = make_streaming(target, request, name=name)
    else:
        clip = target.clone()
        clip.patcher = make_streaming(target.patcher, request, name=name)
        outputs[index] = clip
    return tuple(outputs)


def make_variant(core_name: str, core_cls: type) -> type:
    node_id, display, index, kind = VARIANTS[core_name]
    types, names, _ = comfy_adapter.return_spec(core_cls)

    def input_types(cls) -> dict:
        schema = comfy_adapter.input_schema(core_cls)
        schema.setdefault("required", {})
        optional = schema.get("optional", {})
        optional.pop("device", None)  # the core CLIP loaders' own default/cpu switch: compute_device replaces it
        schema["required"].update(streaming_inputs())
        return schema

    def validate_inputs(cls, compute_device: str, donor_device: str, expert_allocation: str = "",
                        virtual_vram_gb: str = AUTO) -> bool | str:
        # Naming the device inputs makes ComfyUI skip its combo check, so an absent device reaches load()
        # and fails there naming it; a malformed allocation or budget is refused when the prompt is queued.
        return validate_streaming_inputs(compute_device, donor_device, expert_allocation, virtual_vram_gb)

    def load(self, **kwargs):
        request = request_from(kwargs)
        return _stream_output(comfy_adapter.call_core(core_cls, kwargs), index, kind, request, model_label(kwargs))

    attrs = {
        "INPUT_TYPES": classmethod(input_types), "VALIDATE_INPUTS": classmethod(validate_inputs),
        "RETURN_TYPES": types, "FUNCTION": "load",
        "CATEGORY": CATEGORY, "load": load,
        "DESCRIPTION": f"{core_name} whose weights stream to the compute device by a DisTorch placement plan.",
    }
    if names:
        attrs["RETURN_NAMES"] = names
    return type(node_id, (), attrs)


def variant_mappings(variants: dict[str, tuple], make: Callable[[str, type], type]
                     ) -> tuple[dict[str, type], dict[str, str]]:
    """Node classes and display names of the ``variants`` (core name -> (node id, display name, ...)) of the core
    loaders this ComfyUI has, each built by ``make(core name, core class)``."""
    classes, names = {}, {}
    for core_name, (node_id, display, *_) in variants.items():
        core_cls = comfy_adapter.core_node(core_name)
        if core_cls is None:
            log.info("[DisTorch] this ComfyUI has no %s; %s not registered", core_name, node_id)
            continue
        classes[node_id] = make(core_name, core_cls)
        names[node_id] = display
    return classes, names


def build_mappings() -> tuple[dict[str, type], dict[str, str]]:
    return variant_mappings(VARIANTS, make_variant)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()
