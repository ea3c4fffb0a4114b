"""GGUF diffusion models through DisTorch's GGUF loader, in a real ComfyUI (in process, ComfyUI's KSampler path).

On CPU CI the compute device is the CPU (torch dequantizers, cpu at both ends of the copy pipeline); on the GPU
machine (tests/gpu/run_on_device.sh gguf_tests) the same file runs on CUDA with Triton dequantization and a pinned arena.
"""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from gguf_helpers import (DIFFUSION, FLUX_BLOCKS, conditioning, flux_file, gguf_unet, loaders, raw_bytes,
                          reference_weights, run_node, sample, streamed_gguf, with_lora)
from gguf_helpers import unload_models_after_each_test  # noqa: F401  (an autouse fixture)

MODELS = {"flux-Q8_0": ("flux", flux_file("Q8_0")), "flux-Q4_K": ("flux", flux_file("Q4_K")),
          "flux-Q5_K": ("flux", flux_file("Q5_K")), "sd3-Q8_0": ("sd3", "distorch-tiny-sd3-Q8_0.gguf"),
          "wan-Q4_K": ("wan", "distorch-tiny-wan-Q4_K.gguf")}


@pytest.fixture(scope="module")
def device(comfy_nodes) -> torch.device:
    import comfy.model_management

    return comfy.model_management.get_torch_device()


@pytest.fixture(scope="module")
def resident(comfy_nodes, device) -> dict[str, torch.Tensor]:
    """Latents of each model loaded by the GGUF node with an all-resident plan (filled as tests ask)."""
    return {}


def resident_latent(comfy_nodes, device, resident: dict, model_id: str) -> torch.Tensor:
    if model_id not in resident:
        arch, name = MODELS[model_id]
        resident[model_id] = sample(comfy_nodes, gguf_unet(comfy_nodes, name, device), arch)
    return resident[model_id]


@pytest.mark.parametrize("model_id", list(MODELS))
def test_a_gguf_model_computes_what_its_dequantized_weights_compute_through_comfyuis_normal_path(
        comfy_nodes, device, resident, model_id) -> None:
    import comfy.sd

    arch, name = MODELS[model_id]
    reference = comfy.sd.load_diffusion_model_state_dict(reference_weights(DIFFUSION / name))
    expected = sample(comfy_nodes, reference, arch)
    del reference
    actual = resident_latent(comfy_nodes, device, resident, model_id)
    assert torch.isfinite(actual).all() and torch.equal(actual, expected)


def test_quantized_weights_are_uint8_parameters_with_their_spec_and_plain_ones_keep_their_dtype(
        comfy_nodes, device) -> None:
    model = gguf_unet(comfy_nodes, flux_file("Q4_K"), device)
    dm = model.model.diffusion_model
    qkv = dm.double_blocks[0].img_attn.qkv.weight
    assert qkv.dtype == torch.uint8 and qkv.dim() == 1
    assert qkv.quant_spec.qtype.name == "Q4_K" and qkv.quant_shape == (9216, 3072)
    assert qkv.numel() == 9216 * 3072 // 256 * 144  # raw bytes, nothing dequantized at load
    assert dm.img_in.weight.dtype == torch.float16 and dm.img_in.weight.shape == (3072, 64)  # 64: no whole K-block
    assert not hasattr(dm.double_blocks[0].img_attn.proj.bias, "quant_spec")


@pytest.mark.parametrize("model_id, streamed, ring_slots", [
    ("flux-Q4_K", ["diffusion_model.single_blocks.0"], 1),
    ("flux-Q4_K", FLUX_BLOCKS, 1),  # everything streamed through one slot
    ("flux-Q8_0", FLUX_BLOCKS, 2),
], ids=["q4k-single", "q4k-all-ring1", "q8_0-all-ring2"])
def test_streamed_plans_give_the_all_resident_latents_bitwise(comfy_nodes, device, resident, model_id, streamed,
                                                              ring_slots) -> None:
    expected = resident_latent(comfy_nodes, device, resident, model_id)
    patcher = streamed_gguf(comfy_nodes, MODELS[model_id][1], streamed, device, ring_slots)
    assert torch.equal(sample(comfy_nodes, patcher, "flux"), expected)
    assert patcher.distorch.engine.misses == 0


def test_streamed_blocks_hold_their_raw_quantized_bytes_and_little_else(comfy_nodes, device) -> None:
    patcher = streamed_gguf(comfy_nodes, flux_file("Q4_K"), FLUX_BLOCKS, device)
    dm = patcher.model.diffusion_model
    blocks = [dm.double_blocks[0], dm.single_blocks[0]]
    raw = sum(raw_bytes(b) for b in blocks)
    params = [p for b in blocks for p in b.parameters()]
    elements = sum(p.quant_spec.numel if hasattr(p, "quant_spec") else p.numel() for p in params)
    assert raw < 0.3 * 2 * elements  # Q4_K: 4.5 bits a weight, against bf16's 16
    assert raw <= patcher.distorch.plan.streamed_bytes <= 1.01 * raw  # the arena packs raw bytes, 256-aligned


# --- LoRA: applied after dequantization, on the compute device, every forward ------------------------------------
@pytest.fixture(scope="module")
def lora_resident(comfy_nodes, device) -> dict[float, torch.Tensor]:
    base = gguf_unet(comfy_nodes, flux_file("Q4_K"), device)
    return {s: sample(comfy_nodes, with_lora(comfy_nodes, base, s), "flux") for s in (0.8, 0.5)}


def test_lora_on_a_gguf_model_equals_lora_on_its_dequantized_weights_in_float32(comfy_nodes, device,
                                                                                  lora_resident) -> None:
    import comfy.sd

    reference = comfy.sd.load_diffusion_model_state_dict(reference_weights(DIFFUSION / flux_file("Q4_K")))
    if reference.model.get_dtype() != torch.float32 or reference.model.manual_cast_dtype is not None:
        pytest.skip("equal only in float32: with a 16-bit model ComfyUI patches the rounded weight, DisTorch the "
                    "exact dequantized one")
    assert torch.equal(sample(comfy_nodes, with_lora(comfy_nodes, reference, 0.8), "flux"), lora_resident[0.8])


def test_lora_on_streamed_gguf_weights_matches_the_resident_lora_bitwise(comfy_nodes, device, lora_resident) -> None:
    patcher = streamed_gguf(comfy_nodes, flux_file("Q4_K"), FLUX_BLOCKS, device)
    assert torch.equal(sample(comfy_nodes, with_lora(comfy_nodes, patcher, 0.8), "flux"), lora_resident[0.8])


def test_changing_the_lora_strength_restages_and_rewrites_nothing(comfy_nodes, device, lora_resident,
                                                                  monkeypatch) -> None:
    patcher = streamed_gguf(comfy_nodes, flux_file("Q4_K"), FLUX_BLOCKS, device)
    sample(comfy_nodes, with_lora(comfy_nodes, patcher, 0.8), "flux")
    engine = patcher.distorch.engine
    calls: list[str] = []
    for method in ("load", "unload", "write_streamed"):
        monkeypatch.setattr(engine, method, _recorded(getattr(engine, method), calls))
    weaker = with_lora(comfy_nodes, patcher, 0.5)
    assert torch.equal(sample(comfy_nodes, weaker, "flux"), lora_resident[0.5])
    assert calls == []  # still loaded; no arena byte rewritten: only the attached patch lists changed
    qkv = patcher.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    key, patches = qkv.quant_patches
    assert key.endswith("double_blocks.0.img_attn.qkv.weight") and patches[0][2] == 1.0 and patches[0][0] == 0.5


def _recorded(method, calls: list[str]):
    def call(*args, **kwargs):
        calls.append(method.__name__)
        return method(*args, **kwargs)

    return call


def test_patches_come_off_quantized_weights_when_the_patch_set_changes_or_the_model_unloads(comfy_nodes,
                                                                                           device) -> None:
    import comfy.model_management as mm

    base = gguf_unet(comfy_nodes, MODELS["sd3-Q8_0"][1], device)
    plain = sample(comfy_nodes, base, "sd3")
    weight = base.model.diffusion_model.context_embedder.weight
    patched = base.clone()
    diff = torch.randn(weight.quant_shape, generator=torch.Generator().manual_seed(3)) * 0.05
    assert patched.add_patches({"diffusion_model.context_embedder.weight": (diff,)}, 1.0)
    assert not torch.equal(sample(comfy_nodes, patched, "sd3"), plain)
    assert hasattr(weight, "quant_patches")
    assert torch.equal(sample(comfy_nodes, base, "sd3"), plain)  # back to the unpatched set: detached
    sample(comfy_nodes, patched, "sd3")
    mm.unload_all_models()
    assert not any(hasattr(p, "quant_patches") for p in base.model.parameters())
    assert torch.equal(sample(comfy_nodes, base, "sd3"), plain)


def test_unloading_frees_the_dequantization_scratch_and_the_next_prompt_matches(comfy_nodes, device) -> None:
    import comfy.model_management as mm

    model = gguf_unet(comfy_nodes, MODELS["sd3-Q8_0"][1], device)
    expected = sample(comfy_nodes, model, "sd3")
    pool = type(model.model.diffusion_model.context_embedder).scratch  # the model's layers share one pool
    assert pool.nbytes >= 128 * 4096 * torch.finfo(model.model.get_dtype()).bits // 8
    mm.unload_all_models()
    assert pool.nbytes == 0 and not model.distorch.engine.is_loaded
    assert torch.equal(sample(comfy_nodes, model, "sd3"), expected)


def test_the_gguf_loader_prints_its_plan_table_and_what_the_file_holds(comfy_nodes, device, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="distorch"):
        model = gguf_unet(comfy_nodes, MODELS["wan-Q4_K"][1], device)
    text = caplog.text
    assert "GGUF distorch-tiny-wan-Q4_K.gguf: wan, F16 x43, Q4_K x26" in text
    assert "WAN21: compute on" in text and "device  role" in text and "total" in text
    assert model.model_size() == model.distorch.plan.device_footprint_bytes
    assert torch.isfinite(sample(comfy_nodes, model, "wan")).all()


def test_the_node_lists_gguf_files_and_core_loaders_still_list_only_theirs(comfy_nodes) -> None:
    ours = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoaderGGUF"].INPUT_TYPES()["required"]["unet_name"][0]
    core = comfy_nodes.NODE_CLASS_MAPPINGS["UNETLoader"].INPUT_TYPES()["required"]["unet_name"][0]
    assert {flux_file("Q4_K"), "distorch-tiny-wan-Q4_K.gguf"} <= set(ours)
    assert all(n.endswith(".gguf") for n in ours) and not any(n.endswith(".gguf") for n in core)
    assert "distorch-tiny-flux.safetensors" in core


def test_a_model_run_without_our_patcher_still_dequantizes_where_its_input_is(comfy_nodes) -> None:
    """ComfyUI's own ModelPatcher (no streaming): the layers move raw bytes to the input's device themselves."""
    patcher, _ = loaders(comfy_nodes).load_gguf_diffusion_model(str(DIFFUSION / MODELS["sd3-Q8_0"][1]))
    cond, latent = conditioning("sd3")
    (out,) = comfy_nodes.common_ksampler(patcher, 42, 1, 1.0, "euler", "simple", cond, cond, latent)
    assert torch.isfinite(out["samples"]).all()


def test_a_file_comfyui_cannot_place_is_refused_naming_it(comfy_nodes, device) -> None:
    from gguf_helpers import TEXT

    with pytest.raises(ValueError, match=r"distorch-t5-base-Q4_K.gguf: its architecture 't5encoder' is a text "
                                         r"encoder, not a diffusion model"):
        loaders(comfy_nodes).load_gguf_diffusion_model(str(TEXT / "distorch-t5-base-Q4_K.gguf"))
    with pytest.raises(ValueError, match=r"tensor '.*' of .*distorch-bad-truncated.gguf: .* the file is truncated"):
        run_node(comfy_nodes, "DisTorchUNETLoaderGGUF", unet_name="distorch-bad-truncated.gguf",
                 compute_device=str(device), virtual_vram_gb=0.0, donor_device="cpu", expert_allocation="")


@pytest.mark.parametrize("name", ["flux_tiny_q4_k", "sd3_tiny_q8_0", "wan_tiny_q4_k", "t5_base_q4_k"])
def test_the_tiny_gguf_files_hold_the_names_and_shapes_this_hosts_classes_build(comfy_nodes, models, name) -> None:
    """The GGUFs were written on whichever host came first; the models directory is shared by the hosts."""
    from synth.gguf_catalog import GGUF_TINY
    from synth.gguf_writer import llama_cpp_names, plan_tensors

    read_gguf = sys.modules[loaders(comfy_nodes).__name__.rsplit(".nodes.", 1)[0] + ".distorch.gguf_file"].read_gguf
    spec = next(s for s in GGUF_TINY if s.name == name)
    sd, cfg = spec.build(spec), spec.config["gguf"]
    names = llama_cpp_names(sorted(sd), cfg["names"]) if cfg.get("names") else {}
    built = {p.name: p.logical for p in plan_tensors(sd, cfg, names)}
    on_disk = {n: t.shape for n, t in read_gguf(models[name]).tensors.items()}
    assert built == on_disk
