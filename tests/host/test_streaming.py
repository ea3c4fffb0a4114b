"""DisTorch streaming inside a real ComfyUI (in process): sampling through ComfyUI's own KSampler path.

On CPU the copy machinery runs with cpu at both ends (host arena -> staging ring -> module views), so
every behaviour here except speed is the one the GPU path has: plans, hooks, LoRA merging into the arena,
ComfyUI's load/unload bookkeeping.
"""
from __future__ import annotations

import sys

import pytest
import torch

SEED, STEPS = 42, 2


@pytest.fixture(scope="module")
def streaming(comfy_nodes):
    """Our distorch_loaders module (as ComfyUI imported it) and ComfyUI's modules the tests use."""
    module = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoader"].__module__]
    return module


def _node(comfy_nodes, node_id: str, **inputs):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def _flux_cond(dim: int = 768):
    gen = torch.Generator().manual_seed(7)
    cond = torch.randn(1, 77, dim, generator=gen)
    pooled = torch.randn(1, 768, generator=gen)
    return [[cond, {"pooled_output": pooled, "guidance": 3.5}]]


def _sample(comfy_nodes, model, positive, negative, latent, cfg=1.0) -> torch.Tensor:
    (out,) = comfy_nodes.common_ksampler(model, SEED, STEPS, cfg, "euler", "simple", positive, negative, latent)
    return out["samples"]


def _flux_latent():
    return {"samples": torch.zeros(1, 16, 8, 8)}


def _sd_latent():
    return {"samples": torch.zeros(1, 4, 8, 8)}


def _forced_plan(streaming, model, streamed: list[str], ring_slots: int = 2):
    """A plan streaming exactly ``streamed`` (the tiny models are too small for the budget planner to
    ever prefer streaming their few, huge blocks; the engine must still be exact for any plan)."""
    from dataclasses import replace

    plan = streaming.plan_for_module(model.model, streaming.StreamRequest("cpu", 0.0, "cpu"))
    sizes = dict(plan.block_sizes)
    return replace(
        plan, resident=tuple(n for n in plan.resident if n not in streamed),
        streamed=tuple((n, "cpu") for n in streamed), ring_slots=min(ring_slots, len(streamed)),
        slot_bytes=max(sizes[n] for n in streamed), streamed_bytes=sum(sizes[n] for n in streamed),
        resident_bytes=plan.resident_bytes - sum(sizes[n] for n in streamed),
    )


def _streamed_patcher(streaming, model, streamed: list[str], ring_slots: int = 2):
    plan = _forced_plan(streaming, model, streamed, ring_slots)
    options = streaming.EngineOptions(ring_slots=ring_slots)
    return streaming.StreamingModelPatcher.wrap(model, plan, options, torch.device("cpu"))


@pytest.fixture(scope="module")
def flux_reference(comfy_nodes):
    (model,) = _node(comfy_nodes, "UNETLoader", unet_name="distorch-tiny-flux.safetensors", weight_dtype="default")
    return _sample(comfy_nodes, model, _flux_cond(), _flux_cond(), _flux_latent())


def test_checkpoint_loader_streams_by_virtual_vram_and_matches_resident_bitwise(comfy_nodes) -> None:
    ckpt = "distorch-tiny-sd15.safetensors"
    model, clip, _ = _node(comfy_nodes, "CheckpointLoaderSimple", ckpt_name=ckpt)
    (pos,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="a cat")
    (neg,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="")
    resident = _sample(comfy_nodes, model, pos, neg, _sd_latent(), cfg=3.0)
    streamed_model, _, _ = _node(comfy_nodes, "DisTorchCheckpointLoader", ckpt_name=ckpt, compute_device="cpu",
                                 virtual_vram_gb=0.02, donor_device="cpu", expert_allocation="")
    assert len(streamed_model.distorch.plan.streamed) >= 2
    streamed = _sample(comfy_nodes, streamed_model, pos, neg, _sd_latent(), cfg=3.0)
    assert torch.equal(streamed, resident)
    stats = streamed_model.distorch.engine.telemetry.summary()
    assert streamed_model.distorch.engine.misses == 0


@pytest.mark.parametrize("streamed_blocks, ring_slots", [
    (["diffusion_model.single_blocks.0"], 1),
    (["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"], 2),  # everything streamed
    (["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"], 1),
])
def test_streamed_flux_latents_are_bitwise_identical_to_resident(comfy_nodes, streaming, flux_reference,
                                                                 streamed_blocks, ring_slots) -> None:
    (model,) = _node(comfy_nodes, "UNETLoader", unet_name="distorch-tiny-flux.safetensors", weight_dtype="default")
    patcher = _streamed_patcher(streaming, model, streamed_blocks, ring_slots)
    assert torch.equal(_sample(comfy_nodes, patcher, _flux_cond(), _flux_cond(), _flux_latent()), flux_reference)
