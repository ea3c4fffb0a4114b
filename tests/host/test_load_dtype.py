"""The plan preview sizes a model in the dtype ComfyUI really loads it in (nodes.comfy_adapter asks ComfyUI),
so its layout is the engine's layout of the loaded model: checked here against ComfyUI's own loaders, in
process. tests/host/test_preview_verdict.py checks the consequence on the server: same verdict as the run.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def plugin(comfy_nodes):
    """Our package as ComfyUI imported it: (comfy_adapter, routes, distorch.layout, distorch.plan_preview)."""
    package = sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoader"].__module__].__package__
    root = package.rpartition(".")[0]
    return tuple(importlib.import_module(f"{root}.{name}") for name in
                 ("nodes.comfy_adapter", "nodes.routes", "distorch.layout", "distorch.plan_preview"))


def _load(comfy_nodes, node_id: str, **inputs):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def _float_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


def _dominant_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype holding most of the module's parameter elements."""
    counts: dict[torch.dtype, int] = {}
    for param in module.parameters():
        counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get)


def _assert_preview_layout_is_the_loaded_layout(plugin, folder: str, path, model: torch.nn.Module,
                                                weight_dtype: str = "default") -> None:
    _, routes, layout, plan_preview = plugin
    loaded = layout.layout_model(model)
    preview = plan_preview.read_layout(path, routes.MODEL_FOLDERS[folder],
                                       [routes.load_dtype_name(folder, str(path), weight_dtype)])
    assert [size for _, size in preview.blocks] == [size for _, size in loaded.block_sizes]
    assert all(name.endswith(mine) for (mine, _), (name, _) in zip(preview.blocks, loaded.block_sizes))
    # Outside the blocks, the loaded model only adds what no file holds (e.g. its sigma table).
    assert 0 <= loaded.other_bytes - preview.other_bytes < 100_000


def test_checkpoint_weights_load_in_the_dtype_the_adapter_names(comfy_nodes, plugin, models) -> None:
    adapter, routes, _, _ = plugin
    sd15 = models["sd15_tiny"]
    model, _, _ = _load(comfy_nodes, "CheckpointLoaderSimple", ckpt_name=sd15.name)
    assert routes.load_dtype_name("checkpoints", str(sd15)) == "F32"  # the file is fp16; --cpu loads fp32
    assert _float_dtypes(model.model.diffusion_model) == {torch.float32}
    _assert_preview_layout_is_the_loaded_layout(plugin, "checkpoints", sd15, model.model)


@pytest.mark.parametrize("weight_dtype, expected", [("default", torch.float32), ("fp8_e4m3fn", torch.float8_e4m3fn)])
def test_diffusion_model_weights_load_in_the_dtype_the_adapter_names(comfy_nodes, plugin, models, weight_dtype,
                                                                     expected) -> None:
    adapter, routes, _, plan_preview = plugin
    flux = models["flux_tiny"]
    (model,) = _load(comfy_nodes, "UNETLoader", unet_name=flux.name, weight_dtype=weight_dtype)
    assert adapter.diffusion_model_load_dtype(plan_preview.read_header(flux), {}, weight_dtype) == expected
    assert _float_dtypes(model.model.diffusion_model) == {expected}
    _assert_preview_layout_is_the_loaded_layout(plugin, "diffusion_models", flux, model.model, weight_dtype)


def test_text_encoder_weights_load_in_the_dtype_the_adapter_names(comfy_nodes, plugin, models) -> None:
    adapter, _, _, plan_preview = plugin
    clip_l = models["clip_l"]
    (clip,) = _load(comfy_nodes, "CLIPLoader", clip_name=clip_l.name, type="stable_diffusion")
    expected = adapter.text_encoder_load_dtype(plan_preview.read_header(clip_l))
    assert _dominant_dtype(clip.cond_stage_model) == expected  # ComfyUI keeps a 4-byte logit scale in fp32
    _assert_preview_layout_is_the_loaded_layout(plugin, "text_encoders", clip_l, clip.patcher.model)


@pytest.mark.parametrize("option, dtype", [("default", None), ("fp8_e4m3fn", torch.float8_e4m3fn),
                                           ("fp8_e4m3fn_fast", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_every_weight_dtype_option_of_the_core_unet_loader_names_a_dtype(comfy_nodes, plugin, option, dtype) -> None:
    adapter = plugin[0]
    options = comfy_nodes.NODE_CLASS_MAPPINGS["UNETLoader"].INPUT_TYPES()["required"]["weight_dtype"][0]
    assert option in options
    assert adapter.forced_weight_dtype(option) == dtype


def test_an_unknown_weight_dtype_option_is_refused(plugin) -> None:
    with pytest.raises(ValueError, match="unknown weight_dtype 'int4'"):
        plugin[0].forced_weight_dtype("int4")


def test_a_quantized_diffusion_model_keeps_its_stored_dtypes(plugin, models) -> None:
    adapter, _, _, plan_preview = plugin
    header = dict(plan_preview.read_header(models["flux_tiny"]))
    header["scaled_fp8"] = {"dtype": "F8_E4M3", "shape": [], "data_offsets": [0, 1]}
    assert adapter.diffusion_model_load_dtype(header, {}) is None
