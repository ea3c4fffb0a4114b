"""Test-only ComfyUI node (never shipped): reports where models really are while a prompt executes.

The test fixture puts this folder on ComfyUI's custom_nodes path next to the plugin. The probe asks
ComfyUI itself to load each model (``load_models_gpu``, exactly what KSampler/VAEDecode do), then
records the patcher's load/offload device and the device of its first weight at that moment.
"""
import ctypes
import ctypes.util
import gc

import comfy.model_management
from aiohttp import web
from server import PromptServer

from .coexistence import NODE_CLASS_MAPPINGS as COEXISTENCE_PROBES  # tests/gpu/dynamic_vram_coexistence.py


def _patcher(obj):
    return obj if hasattr(obj, "load_device") and hasattr(obj, "model_size") else obj.patcher


def _placement(obj):
    patcher = _patcher(obj)
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    weight = next(patcher.model.parameters())
    record = {"load_device": str(patcher.load_device), "offload_device": str(patcher.offload_device),
              "weights_device": str(weight.device), "comfy_default_device": str(comfy.model_management.get_torch_device())}
    if hasattr(obj, "device") and hasattr(obj, "first_stage_model"):
        record["vae_device"] = str(obj.device)
    return record


class DistorchProbePlacement:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"label": ("STRING", {"default": "probe"})},
                "optional": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",)}}

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "distorch/testing"

    def probe(self, label, **models):
        report = {name: _placement(obj) for name, obj in models.items() if obj is not None}
        return {"ui": {"placement": [report], "label": [label]}}


NODE_CLASS_MAPPINGS = {"DistorchProbePlacement": DistorchProbePlacement, **COEXISTENCE_PROBES}


@PromptServer.instance.routes.post("/distorch_test/malloc_trim")
async def malloc_trim(request):
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim), so that RSS measures live
    memory: freed blocks it keeps for reuse are retention, not a leak (tests/host/test_soak.py)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    return web.json_response({"trimmed": bool(trim(0)) if trim else None, "available": trim is not None})
