"""GGUF models on a real GPU, inside ComfyUI (in process): the tiny GGUF Flux streamed as raw quantized bytes gives
the all-resident latents bit for bit, and the pinned host RAM it takes is its streamed raw bytes (<= 1.01x)."""
from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"]
QTYPES = ["Q4_K", "Q5_K"]  # random-block types: quick to synthesize; Q8_0 is covered by the CPU suite
DEVICE = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def comfy_nodes():
    """ComfyUI (on CUDA) with this plugin loaded, and the tiny GGUF Fluxes written if missing."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_server import BASE_DIR, COMFY_ROOT, MODELS_DIR, prepare_base, HOST
    from synth.comfy_env import import_comfy
    from synth_models import generate_set

    import_comfy(COMFY_ROOT)
    generate_set(MODELS_DIR, "tiny", device="cuda", only=[f"flux_tiny_{q.lower()}" for q in QTYPES])
    import utils.extra_config  # noqa: F401  (before `nodes`)
    import folder_paths
    import nodes

    folder_paths.add_model_folder_path("diffusion_models", str(MODELS_DIR / "diffusion_models"))
    prepare_base(HOST)
    if "DisTorchUNETLoaderGGUF" not in nodes.NODE_CLASS_MAPPINGS:
        assert asyncio.run(nodes.load_custom_node(str(BASE_DIR / "custom_nodes" / "comfyui-distorch")))
    return nodes


def _modules(comfy_nodes):
    gguf = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoaderGGUF"].__module__]
    streaming = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoader"].__module__]
    return gguf, streaming


def _sample(comfy_nodes, model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    cond = [[torch.randn(1, 77, 768, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen),
                                                     "guidance": 3.5}]]
    (out,) = comfy_nodes.common_ksampler(model, 42, 2, 1.0, "euler", "simple", cond, cond,
                                         {"samples": torch.zeros(1, 16, 16, 16)})
    return out["samples"]


def _resident(comfy_nodes, name: str):
    (model,) = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoaderGGUF"]().load(
        unet_name=name, compute_device="cuda:0", virtual_vram_gb=0.0, donor_device="cpu", expert_allocation="")
    return model


def _streamed(comfy_nodes, name: str, ring_slots: int):
    gguf, streaming = _modules(comfy_nodes)
    from comfy_server import MODELS_DIR

    patcher, _ = gguf.load_gguf_diffusion_model(str(MODELS_DIR / "diffusion_models" / name))
    plan = streaming.plan_for_module(patcher.model, streaming.StreamRequest("cuda:0", 0.0, "cpu"))
    sizes = dict(plan.block_sizes)
    plan = replace(plan, resident=tuple(n for n in plan.resident if n not in BLOCKS),
                   streamed=tuple((n, "cpu") for n in BLOCKS), ring_slots=ring_slots,
                   slot_bytes=max(sizes[n] for n in BLOCKS), streamed_bytes=sum(sizes[n] for n in BLOCKS),
                   resident_bytes=plan.resident_bytes - sum(sizes[n] for n in BLOCKS))
    options = streaming.EngineOptions(ring_slots=ring_slots)
    return streaming.StreamingModelPatcher.wrap(patcher, plan, options, DEVICE)


@pytest.mark.parametrize("ring_slots", [1, 2])
@pytest.mark.parametrize("qtype", QTYPES)
def test_streamed_gguf_flux_gives_the_resident_latents_bitwise_on_cuda(comfy_nodes, qtype, ring_slots) -> None:
    name = f"distorch-tiny-flux-{qtype}.gguf"
    expected = _sample(comfy_nodes, _resident(comfy_nodes, name))
    patcher = _streamed(comfy_nodes, name, ring_slots)
    actual = _sample(comfy_nodes, patcher)
    assert torch.isfinite(actual).all() and torch.equal(actual, expected)
    assert patcher.distorch.engine.misses == 0
    qkv = patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert qkv.dtype == torch.uint8 and qkv.quant_spec.qtype.name == qtype


def test_pinned_host_ram_of_a_streamed_gguf_model_is_its_raw_streamed_bytes(comfy_nodes) -> None:
    import comfy.model_management as mm

    patcher = _streamed(comfy_nodes, "distorch-tiny-flux-Q4_K.gguf", 2)
    mm.load_models_gpu([patcher])
    dm = patcher.model.diffusion_model
    raw = sum(p.numel() * p.element_size() for block in (dm.double_blocks[0], dm.single_blocks[0])
              for p in block.parameters())
    pinned = patcher.distorch.engine.pinned_bytes
    assert raw <= pinned <= 1.01 * raw, (pinned, raw)
    assert all(p.device.type == "cpu" for p in dm.single_blocks[0].parameters())  # between forwards: the arena
    assert all(p.device == DEVICE for p in dm.img_in.parameters())  # resident
    mm.unload_all_models()
    assert patcher.distorch.engine.pinned_bytes == 0
