"""Shared by the GGUF host tests: the tiny GGUF models, their reference weights, conditioning, forced plans."""
from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from comfy_server import MODELS_DIR
from forced_plans import forced_plan

SEED, STEPS = 42, 1
DIFFUSION = MODELS_DIR / "diffusion_models"
TEXT = MODELS_DIR / "text_encoders"
FLUX_BLOCKS = ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"]
LORA = "distorch-tiny-flux-lora.safetensors"


@pytest.fixture(autouse=True)
def unload_models_after_each_test(comfy_nodes):
    """Every model unloaded and collected after a test: ComfyUI keeps loaded models until memory runs short,
    and with 0.5-2 GB tiny Fluxes (their float32 references) a few tests would fill a small CI machine."""
    yield
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.cleanup_models()
    gc.collect()


def flux_file(qtype: str) -> str:
    return f"distorch-tiny-flux-{qtype}.gguf"


def loaders(comfy_nodes):
    """nodes/gguf_loaders.py as ComfyUI imported it."""
    return sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoaderGGUF"].__module__]


def streaming_module(comfy_nodes):
    """nodes/distorch_loaders.py as ComfyUI imported it."""
    return sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoader"].__module__]


def run_node(comfy_nodes, node_id: str, **inputs):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def gguf_unet(comfy_nodes, name: str, device: torch.device, virtual_vram_gb: float = 0.0):
    (model,) = run_node(comfy_nodes, "DisTorchUNETLoaderGGUF", unet_name=name, compute_device=str(device),
                        virtual_vram_gb=virtual_vram_gb, donor_device="cpu", expert_allocation="")
    return model


def reference_weights(path, keys=None) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantized by gguf's own numpy code, in float32 (keys renamed by ``keys``)."""
    from gguf import GGUFReader

    sd = {}
    reader = GGUFReader(str(path))
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        original = reader.get_field(f"comfy.gguf.orig_shape.{t.name}")  # ComfyUI-GGUF's own convention
        if original is not None:
            shape = tuple(int(original.parts[i][0]) for i in original.data)
        with np.errstate(invalid="ignore", over="ignore"):
            dense = gguf_quants.dequantize(np.asarray(t.data), GGMLQuantizationType(t.tensor_type))
        key = keys(t.name) if keys else t.name
        sd[key] = torch.from_numpy(np.array(dense, dtype=np.float32).reshape(shape))
    return sd


def conditioning(arch: str) -> tuple[list, dict]:
    """Seeded random conditioning and an empty latent of the architecture's shapes."""
    gen = torch.Generator().manual_seed(7)
    if arch == "flux":
        cond = [[torch.randn(1, 77, 768, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen),
                                                         "guidance": 3.5}]]
        return cond, {"samples": torch.zeros(1, 16, 8, 8)}
    if arch == "sd3":
        cond = [[torch.randn(1, 77, 4096, generator=gen), {"pooled_output": torch.randn(1, 2048, generator=gen)}]]
        return cond, {"samples": torch.zeros(1, 16, 8, 8)}
    return [[torch.randn(1, 16, 4096, generator=gen), {}]], {"samples": torch.zeros(1, 16, 1, 8, 8)}


def sample(comfy_nodes, model, arch: str) -> torch.Tensor:
    cond, latent = conditioning(arch)
    (out,) = comfy_nodes.common_ksampler(model, SEED, STEPS, 1.0, "euler", "simple", cond, cond, latent)
    return out["samples"]


def streamed_gguf(comfy_nodes, name: str, streamed: list[str], device: torch.device, ring_slots: int = 1):
    """Our GGUF loader's model with a forced plan (the node's own loading, then the engine's wrap)."""
    streaming = streaming_module(comfy_nodes)
    patcher, _ = loaders(comfy_nodes).load_gguf_diffusion_model(str(DIFFUSION / name))
    plan = forced_plan(streaming, patcher, streamed, ring_slots, device)
    return streaming.StreamingModelPatcher.wrap(patcher, plan, streaming.EngineOptions(ring_slots=ring_slots), device)


def with_lora(comfy_nodes, model, strength: float):
    (patched,) = run_node(comfy_nodes, "LoraLoaderModelOnly", model=model, lora_name=LORA, strength_model=strength)
    return patched


def raw_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
