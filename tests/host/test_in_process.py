"""The device loaders used through ComfyUI's Python API in this process (no server).

'meta' stands in for a second device: it is a real torch device that CPU CI has, and setting a load
target does not move weights, so nothing here computes on it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

META, CPU = torch.device("meta"), torch.device("cpu")


@pytest.fixture
def loaders(comfy_nodes, monkeypatch: pytest.MonkeyPatch):
    """The device_loaders module, with 'meta' counted as present."""
    module = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["UNETLoaderDevice"].__module__]
    real_require = module.require_device
    monkeypatch.setattr(module, "require_device", lambda name: real_require(name, available=["cpu", "meta"]))
    return module


def _load(comfy_nodes, node_id: str, **inputs):
    node_cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(node_cls(), node_cls.FUNCTION)(**inputs)


def test_two_loads_on_two_devices_each_keep_their_own_device(comfy_nodes, loaders) -> None:
    inputs = {"unet_name": "distorch-tiny-sd3.safetensors", "weight_dtype": "default"}
    (on_cpu,) = _load(comfy_nodes, "UNETLoaderDevice", device="cpu", **inputs)
    (on_meta,) = _load(comfy_nodes, "UNETLoaderDevice", device="meta", **inputs)
    (again_cpu,) = _load(comfy_nodes, "UNETLoaderDevice", device="cpu", **inputs)
    assert on_cpu is not on_meta and on_cpu.model is not on_meta.model
    assert (on_cpu.load_device, on_meta.load_device, again_cpu.load_device) == (CPU, META, CPU)
    assert on_cpu.offload_device == CPU
    # Only the load target changed: ComfyUI moves weights later, in load_models_gpu.
    assert next(on_meta.model.parameters()).device == CPU


def test_vae_placement_retargets_its_patcher_and_compute_device_but_not_its_output_device(
        comfy_nodes, loaders) -> None:
    import comfy.model_management

    (vae,) = _load(comfy_nodes, "VAELoaderDevice", vae_name="distorch-taesd.safetensors", device="meta")
    assert vae.device == META and vae.patcher.load_device == META
    assert vae.output_device == comfy.model_management.intermediate_device()


def test_a_vae_moved_to_the_cpu_computes_in_the_dtype_comfyui_gives_a_cpu_vae(comfy_nodes, loaders) -> None:
    import comfy.model_management as mm

    (vae,) = _load(comfy_nodes, "VAELoader", vae_name="distorch-taef1.safetensors")
    vae.vae_dtype = torch.bfloat16  # as built on a GPU server: latents cast to bf16, weights left as loaded
    placed = loaders.comfy_adapter.place_on_device(vae, CPU)[1]
    assert placed.vae_dtype == mm.vae_dtype(CPU, placed.working_dtypes) == torch.float32
    assert {p.dtype for p in placed.first_stage_model.parameters()} == {torch.float32}
    image = placed.decode(torch.zeros(1, 16, 8, 8))
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_clip_on_cpu_goes_through_the_core_loaders_own_cpu_path(comfy_nodes, loaders) -> None:
    (clip,) = _load(comfy_nodes, "CLIPLoaderDevice", clip_name="distorch-clip-l.safetensors",
                    type="stable_diffusion", device="cpu")
    assert clip.patcher.load_device == CPU and clip.patcher.offload_device == CPU
    assert next(clip.cond_stage_model.parameters()).device == CPU


def test_retargeting_a_model_comfy_already_loaded_drops_it_from_the_loaded_list(comfy_nodes, loaders) -> None:
    import comfy.model_management as mm

    (model,) = _load(comfy_nodes, "UNETLoaderDevice", unet_name="distorch-tiny-sd3.safetensors",
                     weight_dtype="default", device="cpu")
    mm.load_models_gpu([model])
    assert any(loaded.model is model for loaded in mm.current_loaded_models)
    loaders.comfy_adapter.place_on_device(model, META)
    assert not any(loaded.model is model for loaded in mm.current_loaded_models)
    assert model.load_device == META


def test_v3_core_nodes_are_read_and_called_through_their_schema(comfy_nodes, loaders) -> None:
    adapter = loaders.comfy_adapter
    latent_node = comfy_nodes.NODE_CLASS_MAPPINGS["EmptySD3LatentImage"]
    assert adapter.is_v3(latent_node)
    assert {"width", "height", "batch_size"} <= set(adapter.input_schema(latent_node)["required"])
    (latent,) = adapter.call_core(latent_node, {"width": 64, "height": 64, "batch_size": 1})
    assert latent["samples"].shape == (1, 16, 8, 8)


def test_unknown_objects_are_refused_rather_than_silently_left_in_place(loaders) -> None:
    with pytest.raises(TypeError, match="cannot place"):
        loaders.comfy_adapter.place_on_device(object(), CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: run on the GPU machine")
def test_a_graph_with_models_on_cuda_and_cpu_computes_each_where_its_loader_put_it(comfy_nodes) -> None:
    import comfy.model_management as mm

    (model,) = _load(comfy_nodes, "UNETLoaderDevice", unet_name="distorch-tiny-flux.safetensors",
                     weight_dtype="default", device="cuda:0")
    (clip,) = _load(comfy_nodes, "CLIPLoaderDevice", clip_name="distorch-clip-l.safetensors",
                    type="stable_diffusion", device="cpu")
    (vae,) = _load(comfy_nodes, "VAELoaderDevice", vae_name="distorch-taef1.safetensors", device="cpu")
    (cond,) = _load(comfy_nodes, "CLIPTextEncode", clip=clip, text="a harbour at night")
    assert cond[0][0].device == CPU
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (out,) = comfy_nodes.common_ksampler(model, 1, 2, 1.0, "euler", "simple", cond, cond, latent)
    assert next(model.model.diffusion_model.parameters()).device.type == "cuda"  # still loaded after sampling
    (image,) = _load(comfy_nodes, "VAEDecode", vae=vae, samples=out)
    mm.load_models_gpu([vae.patcher])
    assert next(vae.first_stage_model.parameters()).device == CPU
    assert next(clip.cond_stage_model.parameters()).device == CPU
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
