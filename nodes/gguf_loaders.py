"""DisTorch loaders for GGUF files: quantized weights streamed as raw bytes and dequantized on the compute device.

- ``DisTorchUNETLoaderGGUF``: a diffusion-model ``.gguf`` from the diffusion_models (unet) folders.
- ``DisTorchCLIPLoaderGGUF``, ``DisTorchDualCLIPLoaderGGUF``, ``DisTorchTripleCLIPLoaderGGUF``: the core CLIP
  loaders' inputs, whose file lists hold the text-encoder folders' ``.gguf`` files beside the usual ones (a
  llama.cpp T5 or LLM encoder next to a safetensors CLIP-L, as in a Flux graph).

Every node has the streaming inputs of the safetensors DisTorch loaders (nodes/distorch_loaders.py) and prints the
same plan table. The file is read memory-mapped; quantized tensors become uint8 Parameters (no copy until the
engine places them: pinned arena for streamed blocks, the compute device for resident ones), built through
ComfyUI's own loaders with custom operations (nodes/gguf_ops.py), so ComfyUI detects the model from the logical
shapes as it detects any checkpoint. A file that cannot be loaded fails the node with an error naming the file
and the tensor (distorch.gguf_file.GGUFError); the next prompt runs normally.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..distorch.gguf_file import GGUFError, GGUFFile, read_gguf
from ..distorch.quant import ScratchPool
from . import comfy_adapter
from .distorch_loaders import (CATEGORY, make_streaming, request_from, streaming_inputs, validate_streaming_inputs,
                               variant_mappings)
from .gguf_ops import gguf_operations, largest_quantized_numel
from .gguf_state_dict import GGUFStateDict, diffusion_state_dict, text_encoder_state_dict
from .streaming_patcher import StreamingModelPatcher

log = logging.getLogger("distorch")
DIFFUSION_FOLDER, TEXT_FOLDER = "diffusion_models", "text_encoders"
SCRATCH_CALLBACK = "distorch_gguf_scratch"


# --- loading, shared by the nodes (and the tests) ------------------------------------------------------------
def load_gguf_diffusion_model(path: str) -> tuple[Any, ScratchPool]:
    """A core ModelPatcher of the diffusion model in ``path`` with quantized weights, and its scratch pool."""
    loaded = diffusion_state_dict(_read(path))
    scratch = ScratchPool()
    patcher = _through_comfy([loaded], lambda: comfy_adapter.load_diffusion_state_dict(loaded.state_dict,
                                                                                        gguf_operations(scratch)))
    if patcher is None:
        raise GGUFError(path, f"ComfyUI does not recognise the diffusion model in it (architecture "
                        f"{loaded.architecture!r}, {len(loaded.state_dict)} tensors)")
    return patcher, scratch


def load_gguf_text_encoders(paths: list[str], clip_type: str) -> tuple[Any, ScratchPool]:
    """A CLIP (ComfyUI's text-encoder object) from ``.gguf`` and ordinary files, and its scratch pool."""
    loaded = [text_encoder_state_dict(_read(p)) if _is_gguf(p) else None for p in paths]
    state_dicts = [g.state_dict if g is not None else comfy_adapter.load_torch_file(p) for g, p in zip(loaded, paths)]
    scratch = ScratchPool()
    ggufs = [g for g in loaded if g is not None]
    clip = _through_comfy(ggufs, lambda: comfy_adapter.load_text_encoders(state_dicts, clip_type,
                                                                         gguf_operations(scratch)))
    return clip, scratch


def _read(path: str) -> GGUFFile:
    f = read_gguf(path)
    types = ", ".join(f"{n} x{c}" for n, c in sorted(f.type_counts().items(), key=lambda item: -item[1]))
    log.info("[DisTorch] GGUF %s: %s, %s, %.2f GB", os.path.basename(path), f.architecture, types, f.raw_nbytes / 1e9)
    return f


def _is_gguf(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in comfy_adapter.GGUF_EXTENSIONS


def _through_comfy(ggufs: list[GGUFStateDict], load: Any) -> Any:
    """Run ComfyUI's loader. Its state-dict errors (a tensor that does not fit the model ComfyUI detected)
    become GGUFErrors naming the file(s) and, through torch's message, the tensor; quantized tensors that no
    layer took (keys the model does not have) are reported."""
    try:
        result = load()
    except RuntimeError as error:
        if not ggufs:
            raise
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise GGUFError(" + ".join(g.path for g in ggufs),
                        f"ComfyUI could not load it into the model it detected: {detail}") from None
    for loaded in ggufs:
        unused = loaded.unused()
        if unused and result is not None:
            log.warning("[DisTorch] %s: %d quantized tensors were not used by the model ComfyUI built: %s",
                        loaded.path, len(unused), [s.name for s in unused[:8]])
    return result


def dequant_scratch_bytes(model: torch.nn.Module) -> int:
    """VRAM of the dequantization scratch: the largest quantized weight in the model's compute dtype (patches
    on quantized weights add float32 buffers of their weights while a LoRA is attached)."""
    return largest_quantized_numel(model) * torch.finfo(comfy_adapter.compute_dtype(model)).bits // 8


def stream_gguf(patcher: Any, scratch: ScratchPool, request: Any) -> StreamingModelPatcher:
    """make_streaming, with the dequantization scratch counted in the VRAM kept free beside the weights, and the
    scratch freed whenever ComfyUI unloads the model."""
    streaming = make_streaming(patcher, request, extra_reserve_bytes=dequant_scratch_bytes(patcher.model))
    comfy_adapter.on_detach(streaming, SCRATCH_CALLBACK, lambda *_: scratch.clear())
    return streaming


# --- the nodes ---------------------------------------------------------------------------------------------
def _validate(cls, compute_device: str, donor_device: str, expert_allocation: str = "",
              virtual_vram_gb: str = "auto") -> bool | str:
    return validate_streaming_inputs(compute_device, donor_device, expert_allocation, virtual_vram_gb)


class DisTorchUNETLoaderGGUF:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = ("A GGUF diffusion model whose quantized weights stream as raw bytes and are dequantized on the "
                   "compute device, by a DisTorch placement plan.")
    VALIDATE_INPUTS = classmethod(_validate)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        files = comfy_adapter.gguf_files(DIFFUSION_FOLDER)
        return {"required": {"unet_name": (files, {"tooltip": "a .gguf in models/diffusion_models or models/unet"}),
                             **streaming_inputs()}}

    def load(self, unet_name: str, **kwargs) -> tuple:
        request = request_from(kwargs)
        path = comfy_adapter.model_path(DIFFUSION_FOLDER, unet_name)
        patcher, scratch = load_gguf_diffusion_model(path)
        return (stream_gguf(patcher, scratch, request),)


# core node -> (our node id, display name, its file inputs)
TEXT_VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "CLIPLoader": ("DisTorchCLIPLoaderGGUF", "Load CLIP (GGUF, DisTorch streaming)", ("clip_name",)),
    "DualCLIPLoader": ("DisTorchDualCLIPLoaderGGUF", "DualCLIPLoader (GGUF, DisTorch streaming)",
                       ("clip_name1", "clip_name2")),
    "TripleCLIPLoader": ("DisTorchTripleCLIPLoaderGGUF", "TripleCLIPLoader (GGUF, DisTorch streaming)",
                         ("clip_name1", "clip_name2", "clip_name3")),
}


def text_encoder_files() -> list[str]:
    return sorted(set(comfy_adapter.model_files(TEXT_FOLDER)) | set(comfy_adapter.gguf_files(TEXT_FOLDER)))


def make_text_variant(core_name: str, core_cls: type) -> type:
    node_id, _, file_inputs = TEXT_VARIANTS[core_name]

    def input_types(cls) -> dict:
        schema = comfy_adapter.input_schema(core_cls)
        schema.get("optional", {}).pop("device", None)  # compute_device replaces the core's default/cpu switch
        files = text_encoder_files()
        for name in file_inputs:
            schema["required"][name] = (files,)
        schema["required"].update(streaming_inputs())
        return schema

    def load(self, **kwargs) -> tuple:
        request = request_from(kwargs)
        paths = [comfy_adapter.model_path(TEXT_FOLDER, kwargs.pop(name)) for name in file_inputs]
        clip, scratch = load_gguf_text_encoders(paths, kwargs.get("type", "stable_diffusion"))
        clip.patcher = stream_gguf(clip.patcher, scratch, request)
        return (clip,)

    return type(node_id, (), {
        "INPUT_TYPES": classmethod(input_types), "VALIDATE_INPUTS": classmethod(_validate),
        "RETURN_TYPES": ("CLIP",), "FUNCTION": "load", "CATEGORY": CATEGORY, "load": load,
        "DESCRIPTION": f"{core_name} that also reads llama.cpp GGUF text encoders (T5, LLaMA, Qwen), streamed as raw "
                       "quantized bytes by a DisTorch placement plan.",
    })


def build_mappings() -> tuple[dict[str, type], dict[str, str]]:
    classes, names = variant_mappings(TEXT_VARIANTS, make_text_variant)
    return ({"DisTorchUNETLoaderGGUF": DisTorchUNETLoaderGGUF, **classes},
            {"DisTorchUNETLoaderGGUF": "Load Diffusion Model (GGUF, DisTorch streaming)", **names})


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()
