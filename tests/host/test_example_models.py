"""The stand-ins of the example workflows' model files are detected by the host ComfyUI as the models they
stand for (read from their headers: shapes and key names are what detection looks at)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfy_server import COMFY_ROOT, ensure_models
from example_graphs import STAND_INS

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64}


@pytest.fixture(scope="module")
def stand_ins() -> dict[str, Path]:
    from synth.comfy_env import import_comfy

    import_comfy(COMFY_ROOT)
    return ensure_models("examples") | ensure_models("tiny")


def _meta_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors of the right shape and dtype: all that detection reads, no weights."""
    import json
    import struct

    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {k[len(prefix):]: torch.empty(v["shape"], dtype=DTYPES[v["dtype"]], device="meta")
            for k, v in header.items() if k != "__metadata__" and k.startswith(prefix)}


def _detected(path: Path, prefix: str = "") -> object:
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(_meta_state_dict(path, prefix), "")
    assert config is not None, f"{path.name}: not detected"
    return config


def test_flux1_dev_stand_in_is_flux_dev_with_t5_width_text_input(stand_ins) -> None:
    config = _detected(stand_ins[STAND_INS["flux1-dev.safetensors"][1]])
    assert type(config).__name__ == "Flux"  # guidance_in present: dev, not schnell
    assert config.unet_config["context_in_dim"] == 4096 and config.unet_config["hidden_size"] == 3072


def test_wan_14b_stand_in_is_wan21_text_to_video_with_umt5_width_text_input(stand_ins) -> None:
    config = _detected(stand_ins[STAND_INS["wan2.1_t2v_14B_bf16.safetensors"][1]])
    assert type(config).__name__ == "WAN21_T2V"
    assert config.unet_config["in_dim"] == 16 and config.unet_config["num_layers"] >= 3


def test_sdxl_stand_in_checkpoint_is_sdxl(stand_ins) -> None:
    path = stand_ins[STAND_INS["sd_xl_base_1.0.safetensors"][1]]
    config = _detected(path, "model.diffusion_model.")
    assert type(config).__name__ == "SDXL"
    keys = _meta_state_dict(path)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in keys)  # CLIP-G, as SDXL base holds it
    assert "first_stage_model.decoder.conv_in.weight" in keys


def test_vae_stand_ins_have_the_keys_comfyui_detects_them_by(stand_ins) -> None:
    flux_vae = _meta_state_dict(stand_ins[STAND_INS["ae.safetensors"][1]])
    assert flux_vae["decoder.conv_in.weight"].shape[1] == 16 and "post_quant_conv.weight" not in flux_vae
    wan_vae = _meta_state_dict(stand_ins[STAND_INS["wan_2.1_vae.safetensors"][1]])
    assert "decoder.middle.0.residual.0.gamma" in wan_vae  # Wan 2.1 (2.2 has the key asserted absent below)
    assert wan_vae["decoder.head.0.gamma"].shape[0] == 96
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in wan_vae
