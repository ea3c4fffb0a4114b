"""DisTorch streaming inside a real ComfyUI (in process): sampling through ComfyUI's own KSampler path.

The compute device is ComfyUI's own (`get_torch_device()`): on CPU CI the copy machinery runs with cpu at
both ends (host arena -> staging ring -> module views), so every behaviour here except speed is the one the
GPU path has: plans, hooks, LoRA merging into the arena, ComfyUI's load/unload bookkeeping. On the GPU
machine (`tests/gpu/run_on_device.sh tests`) the same file runs on CUDA with a pinned arena and copy streams.
"""
from __future__ import annotations

import sys

import pytest
import torch

from forced_plans import forced_plan

SEED, STEPS = 42, 2


@pytest.fixture(scope="module")
def device(comfy_nodes) -> torch.device:
    import comfy.model_management

    return comfy.model_management.get_torch_device()


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


def _streamed_patcher(streaming, model, streamed: list[str], ring_slots: int = 2):
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    plan = forced_plan(streaming, model, streamed, ring_slots, device)
    options = streaming.EngineOptions(ring_slots=ring_slots)
    return streaming.StreamingModelPatcher.wrap(model, plan, options, device)


@pytest.fixture(scope="module")
def flux_reference(comfy_nodes):
    (model,) = _node(comfy_nodes, "UNETLoader", unet_name="distorch-tiny-flux.safetensors", weight_dtype="default")
    return _sample(comfy_nodes, model, _flux_cond(), _flux_cond(), _flux_latent())


def test_checkpoint_loader_streams_by_virtual_vram_and_matches_resident_bitwise(comfy_nodes, streaming,
                                                                              device) -> None:
    ckpt = "distorch-tiny-sd15.safetensors"
    model, clip, _ = _node(comfy_nodes, "CheckpointLoaderSimple", ckpt_name=ckpt)
    (pos,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="a cat")
    (neg,) = _node(comfy_nodes, "CLIPTextEncode", clip=clip, text="")
    resident = _sample(comfy_nodes, model, pos, neg, _sd_latent(), cfg=3.0)
    streamed_model, _, _ = _node(comfy_nodes, "DisTorchCheckpointLoader", ckpt_name=ckpt, compute_device=str(device),
                                 virtual_vram_gb=0.02, donor_device="cpu", expert_allocation="")
    assert len(streamed_model.distorch.plan.streamed) >= 2
    streamed = _sample(comfy_nodes, streamed_model, pos, neg, _sd_latent(), cfg=3.0)
    assert torch.equal(streamed, resident)
    registry = sys.modules[type(streamed_model).__module__].REGISTRY
    stats = registry.recent_prompt_stats()[-1]  # what the sampling wrapper recorded for this prompt
    assert stats["streamed_bytes"] > 0 and stats["misses"] == 0


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


def _adapter(streaming):
    return sys.modules[streaming.__name__.rsplit(".", 1)[0] + ".comfy_adapter"]


def test_a_streamed_run_stages_its_conds_on_the_compute_device_once_and_matches_resident(
        comfy_nodes, streaming, monkeypatch) -> None:
    """ComfyUI copies the conds to the device inside every forward; a streamed run puts them there once, before
    its first step (on a GPU that copy would wait behind the blocks' copies). The user's conditioning stays put."""
    adapter = _adapter(streaming)
    staged, stage = [], adapter.stage_conds_on_device

    def spy(guider, device, *args, **kwargs):
        staged.append({kind: sorted(entry["model_conds"])
                       for kind, entries in guider.conds.items() for entry in entries})
        return stage(guider, device, *args, **kwargs)

    resident = _sample(comfy_nodes, _flux(comfy_nodes), _flux_cond(), _flux_cond(), _flux_latent(), cfg=3.0)
    monkeypatch.setattr(adapter, "stage_conds_on_device", spy)
    positive = _flux_cond()
    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    streamed = _sample(comfy_nodes, patcher, positive, _flux_cond(), _flux_latent(), cfg=3.0)
    assert torch.equal(streamed, resident)
    assert len(staged) == 1  # once per run, after ComfyUI processed the conds
    assert {"c_crossattn", "y", "guidance"} <= set(staged[0]["positive"]) and "negative" in staged[0]
    assert positive[0][0].device.type == "cpu" and positive[0][1]["pooled_output"].device.type == "cpu"


def test_staging_moves_plain_cond_tensors_into_new_objects_and_leaves_the_rest(comfy_nodes, streaming) -> None:
    import comfy.conds

    class CustomCond(comfy.conds.CONDRegular):  # a custom node's cond class: its per-step code is unknown
        pass

    context, pooled, extra = torch.ones(1, 4, 8), torch.ones(1, 8), torch.ones(2)
    crossattn, regular = comfy.conds.CONDCrossAttn(context), comfy.conds.CONDRegular(pooled)
    model_conds = {"c_crossattn": crossattn, "y": regular, "custom": CustomCond(extra),
                   "constant": comfy.conds.CONDConstant(3)}
    guider = type("Guider", (), {})()
    guider.conds = {"positive": [{"model_conds": model_conds}]}
    adapter = _adapter(streaming)
    meta = torch.device("meta")  # any device but the CPU: staging is about leaving the host

    assert adapter.stage_conds_on_device(guider, meta, max_bytes=(4 * 8 + 8) * 4 - 1) == 0  # too big: nothing moves
    assert model_conds["c_crossattn"] is crossattn
    assert adapter.stage_conds_on_device(guider, torch.device("cpu")) == 0
    assert adapter.stage_conds_on_device(guider, meta) == (4 * 8 + 8) * 4
    assert type(model_conds["c_crossattn"]) is comfy.conds.CONDCrossAttn and model_conds["c_crossattn"].cond.is_meta
    assert model_conds["y"].cond.is_meta
    assert model_conds["custom"].cond.device.type == "cpu" and model_conds["constant"].cond == 3
    assert crossattn.cond.device.type == "cpu" and regular.cond.device.type == "cpu"  # the originals are untouched


LORA = "distorch-tiny-flux-lora.safetensors"
EVERYTHING = ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"]


def _flux(comfy_nodes):
    (model,) = _node(comfy_nodes, "UNETLoader", unet_name="distorch-tiny-flux.safetensors", weight_dtype="default")
    return model


def _with_lora(comfy_nodes, model, strength: float):
    (patched,) = _node(comfy_nodes, "LoraLoaderModelOnly", model=model, lora_name=LORA, strength_model=strength)
    return patched


def _flux_sample(comfy_nodes, model) -> torch.Tensor:
    return _sample(comfy_nodes, model, _flux_cond(), _flux_cond(), _flux_latent())


@pytest.fixture(scope="module")
def flux_lora_references(comfy_nodes):
    model = _flux(comfy_nodes)
    return {s: _flux_sample(comfy_nodes, _with_lora(comfy_nodes, model, s)) for s in (0.8, 0.5)}


def test_lora_on_streamed_weights_matches_resident_lora_bitwise(comfy_nodes, streaming, flux_lora_references):
    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    assert torch.equal(_flux_sample(comfy_nodes, _with_lora(comfy_nodes, patcher, 0.8)), flux_lora_references[0.8])


def test_changing_lora_strength_rewrites_only_the_lora_keys(comfy_nodes, streaming, flux_lora_references,
                                                             monkeypatch):
    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    _flux_sample(comfy_nodes, _with_lora(comfy_nodes, patcher, 0.8))
    engine = patcher.distorch.engine
    written: list[str] = []
    real_write = engine.write_streamed
    monkeypatch.setattr(engine, "write_streamed", lambda name, value: (written.append(name), real_write(name, value)))
    loads: list[int] = []
    real_load = engine.load
    monkeypatch.setattr(engine, "load", lambda device: (loads.append(1), real_load(device))[1])
    weaker = _with_lora(comfy_nodes, patcher, 0.5)
    assert torch.equal(_flux_sample(comfy_nodes, weaker), flux_lora_references[0.5])
    lora_keys = set(weaker.patches) & engine.streamed_tensor_names()
    assert loads == []  # no restage: the model stayed loaded
    assert lora_keys and set(written) == lora_keys
    assert len(written) == 2 * len(lora_keys)  # each key: original restored once, new result written once


def test_unloading_returns_everything_to_the_host_and_the_next_prompt_matches(comfy_nodes, streaming,
                                                                               flux_reference):
    import comfy.model_management as mm

    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    _flux_sample(comfy_nodes, patcher)
    mm.unload_all_models()
    engine = patcher.distorch.engine
    assert not engine.is_loaded and patcher.loaded_size() == 0
    assert all(not m._forward_pre_hooks for m in patcher.model.modules())
    assert torch.equal(_flux_sample(comfy_nodes, patcher), flux_reference)


class _Interrupt(Exception):
    pass


def test_a_prompt_interrupted_mid_forward_leaves_the_next_prompt_exact(comfy_nodes, streaming, flux_reference):
    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    single = patcher.model.diffusion_model.single_blocks[0]

    def interrupt(module, args):
        raise _Interrupt("user pressed cancel")

    handle = single.register_forward_pre_hook(interrupt)
    with pytest.raises(_Interrupt):
        _flux_sample(comfy_nodes, patcher)
    handle.remove()
    assert torch.equal(_flux_sample(comfy_nodes, patcher), flux_reference)


def test_twenty_load_unload_cycles_leave_no_hooks_and_results_unchanged(comfy_nodes, streaming, flux_reference):
    import comfy.model_management as mm

    patcher = _streamed_patcher(streaming, _flux(comfy_nodes), EVERYTHING)
    for _ in range(20):
        mm.load_models_gpu([patcher])
        assert patcher.distorch.engine.is_loaded
        mm.unload_all_models()
        assert not patcher.distorch.engine.is_loaded
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in patcher.model.modules())
    assert torch.equal(_flux_sample(comfy_nodes, patcher), flux_reference)


def test_a_streamed_text_encoder_gives_the_resident_conditioning_bitwise(comfy_nodes, device) -> None:
    inputs = {"clip_name": "distorch-clip-l.safetensors", "type": "stable_diffusion"}
    (resident_clip,) = _node(comfy_nodes, "CLIPLoader", **inputs)
    (streamed_clip,) = _node(comfy_nodes, "DisTorchCLIPLoader", compute_device=str(device), virtual_vram_gb=0.1,
                             donor_device="cpu", expert_allocation="", **inputs)
    assert len(streamed_clip.patcher.distorch.plan.streamed) >= 3
    ((expected, extra),) = _node(comfy_nodes, "CLIPTextEncode", clip=resident_clip, text="a lighthouse at dusk")[0]
    ((actual, actual_extra),) = _node(comfy_nodes, "CLIPTextEncode", clip=streamed_clip, text="a lighthouse at dusk")[0]
    assert torch.equal(actual, expected) and torch.equal(actual_extra["pooled_output"], extra["pooled_output"])
    assert streamed_clip.patcher.distorch.engine.misses == 0
