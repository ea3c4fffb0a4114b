"""Test-only probes for tests/gpu/dynamic_vram_coexistence.py: what one prompt did and what the server holds.

- DistorchProbeForwards (MODEL -> MODEL): wraps the model with a unet function wrapper that records each
  forward's batch and how many conditionings it carried (2 = cond and uncond batched into one forward).
- DistorchProbeReport (output): those forwards, a sha256 of a LATENT's fp32 bytes (optionally saved to a file
  for a bitwise diff), the decoded image's shape/finiteness, and the server state below.
- DistorchProbeMemory (output): the server state alone - device memory, the memory path, ComfyUI's loaded
  models, DisTorch's live engines.
"""
from __future__ import annotations

import hashlib
import importlib
import sys
from typing import Any

import torch

import comfy.model_management as mm

# label -> one [batch, conditionings] per forward; the list object is kept (the wrapper closes over it)
FORWARDS: dict[str, list[list[int]]] = {}
NONCE = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def memory_path() -> dict[str, Any]:
    try:
        aimdo = bool(importlib.import_module("comfy.memory_management").aimdo_enabled)
    except (ImportError, AttributeError):
        aimdo = None  # this ComfyUI has no Dynamic VRAM generation
    model_patcher = importlib.import_module("comfy.model_patcher")
    core = getattr(model_patcher, "CoreModelPatcher", model_patcher.ModelPatcher)
    return {"dynamic_vram": aimdo, "core_patcher_class": core.__name__}


def loaded_models() -> list[dict[str, Any]]:
    """ComfyUI's current_loaded_models: which model, which patcher class, how much of it is on the device."""
    out = []
    for loaded in list(mm.current_loaded_models):
        patcher = loaded.model
        if patcher is None:  # a dead weak reference (newer ComfyUI)
            continue
        try:
            out.append({"model": type(patcher.model).__name__, "patcher": type(patcher).__name__,
                        "device": str(loaded.device), "loaded_bytes": int(patcher.loaded_size()),
                        "model_bytes": int(patcher.model_size())})
        except Exception as exc:  # a probe must never break the prompt it reports on
            out.append({"error": f"{type(exc).__name__}: {exc}"})
    return out


def distorch_engines() -> list[dict[str, Any]]:
    """Live engines of every copy of the plugin's registry (ComfyUI imports it as `comfyui-distorch`)."""
    registries = {id(m.REGISTRY): m.REGISTRY for name, m in list(sys.modules.items())
                  if name.endswith("distorch.registry") and hasattr(m, "REGISTRY")}
    return [{"loaded": bool(e.is_loaded), "pinned_bytes": int(e.pinned_bytes),
             "device_footprint_bytes": int(e.plan.device_footprint_bytes),
             "streamed_bytes": int(e.plan.streamed_bytes)}
            for registry in registries.values() for e in registry.live_engines()]


def aimdo_vram_bytes() -> int | None:
    control = sys.modules.get("comfy_aimdo.control")
    if control is None or getattr(control, "lib", None) is None:
        return None
    try:
        return int(control.get_total_vram_usage())
    except Exception:
        return None


def server_state() -> dict[str, Any]:
    device = mm.get_torch_device()
    state: dict[str, Any] = {"device": str(device), "memory_path": memory_path(), "loaded_models": loaded_models(),
                             "distorch_engines": distorch_engines()}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        state.update(device_free_bytes=int(free), device_total_bytes=int(total),
                     torch_allocated_bytes=int(torch.cuda.memory_allocated(device)),
                     torch_reserved_bytes=int(torch.cuda.memory_reserved(device)), aimdo_vram_bytes=aimdo_vram_bytes())
    return state


class DistorchProbeForwards:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "label": ("STRING", {"default": "probe"}), "nonce": NONCE}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "wrap"
    CATEGORY = "distorch/testing"

    def wrap(self, model, label, nonce):
        record = FORWARDS.setdefault(label, [])
        record.clear()
        previous = model.model_options.get("model_function_wrapper")

        def forward(apply_model, args):
            record.append([int(args["input"].shape[0]), len(args.get("cond_or_uncond") or ())])
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        wrapped = model.clone()
        wrapped.set_model_unet_function_wrapper(forward)
        return (wrapped,)


class DistorchProbeReport:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"label": ("STRING", {"default": "probe"}), "samples": ("LATENT",)},
                "optional": {"image": ("IMAGE",), "save_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "distorch/testing"

    def report(self, label, samples, image=None, save_path=""):
        latent = samples["samples"]
        record = FORWARDS.get(label, [])
        report = {"label": label, "forwards": [list(f) for f in record], "latent_sha256": tensor_sha256(latent),
                  "latent_shape": list(latent.shape), "latent_finite": bool(torch.isfinite(latent).all())}
        record.clear()
        if image is not None:
            report.update(image_shape=list(image.shape), image_finite=bool(torch.isfinite(image).all()))
        if save_path:
            torch.save(latent.detach().float().cpu(), save_path)
        report.update(server_state())
        return {"ui": {"report": [report]}}


class DistorchProbeMemory:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": NONCE}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "distorch/testing"

    def report(self, nonce):
        return {"ui": {"report": [server_state()]}}


NODE_CLASS_MAPPINGS = {"DistorchProbeForwards": DistorchProbeForwards, "DistorchProbeReport": DistorchProbeReport,
                       "DistorchProbeMemory": DistorchProbeMemory}
