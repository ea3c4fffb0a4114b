"""Model specs: ComfyUI's own classes built on the meta device give real key names and shapes.

Every builder returns {key: tensor}; meta tensors are later filled with seeded random values, real (non-meta)
tensors carry values that must not be random (TAESD latent scale/shift, CLIP position ids).
Builders import comfy lazily: the cache check in synth_models.py needs no ComfyUI import.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

META = torch.device("meta")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Spec:
    name: str  # logical name returned by ensure_models
    relpath: str  # path under the models dir, in ComfyUI's folder layout
    dtype: torch.dtype  # on-disk dtype of floating tensors
    config: dict[str, Any]  # everything that shapes the file; hashed for the cache
    build: Callable[["Spec"], StateDict] = field(compare=False)


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init  # skips init: nothing is allocated on meta anyway


def _prefixed(sd: StateDict, prefix: str) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


# --- Flux -----------------------------------------------------------------------------------------------
# Detection (comfy.model_detection) fixes hidden 3072 / 24 heads / axes [16, 56, 56]; only depths and the
# input widths (txt_in, vector_in) are read from shapes. guidance_in present => supported_models.Flux (dev).
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
# Tiny: 1 + 1 blocks, and txt_in takes 768 (CLIP-L hidden size) instead of T5's 4096, so CLIP-L alone
# (CLIPLoader type stable_diffusion) can drive it without a 9 GB T5.
FLUX_TINY = {**FLUX_DEV, "depth": 1, "depth_single_blocks": 1, "context_in_dim": 768}


def build_flux(spec: Spec) -> StateDict:
    from comfy.ldm.flux.model import Flux

    sd = Flux(dtype=spec.dtype, device=META, operations=_ops(), **flux_params(spec.config)).state_dict()
    return {_bfl_key(key): t for key, t in sd.items()}


def _bfl_key(key: str) -> str:
    """Released Flux.1 files name the QK-norm gains ``*_norm.scale``; newer ComfyUI's classes call them
    ``*_norm.weight`` and rename on load (process_unet_state_dict). Write the released form on every host."""
    if key.endswith(("query_norm.weight", "key_norm.weight")):
        return key[: -len("weight")] + "scale"
    return key


def flux_params(config: dict[str, Any]) -> dict[str, Any]:
    """The Flux.1 config as this ComfyUI's FluxParams wants it. Newer ComfyUI (0.33) added fields without
    defaults that detection fills in for Flux.1 (``txt_ids_dims=[]``); the file's keys and shapes are the same."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    params = copy.deepcopy(config)
    fields = {f.name for f in dataclasses.fields(FluxParams)}
    if "txt_ids_dims" in fields:
        params.setdefault("txt_ids_dims", [])
    return params


# --- SD-style UNets -------------------------------------------------------------------------------------
_UNET_BASE = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                  in_channels=4, model_channels=320, use_temporal_attention=False, use_temporal_resblock=False)
# SD15 matches on context 768 + model_channels 320 + no adm: one level of 320 channels is still "SD15".
SD15_TINY_UNET = {**_UNET_BASE, "adm_in_channels": None, "num_res_blocks": [1], "transformer_depth": [1],
                  "channel_mult": [1], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
                  "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1]}
# Same dict as comfy.model_detection's SDXL entry (SDXL base).
SDXL_UNET = {**_UNET_BASE, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
             "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}


def unet_sd(cfg: dict[str, Any], dtype: torch.dtype) -> StateDict:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**copy.deepcopy(cfg), dtype=dtype, device=META, operations=_ops()).state_dict()


def controlnet_sd(cfg: dict[str, Any], dtype: torch.dtype) -> StateDict:
    from comfy.cldm.cldm import ControlNet

    cfg = {k: v for k, v in copy.deepcopy(cfg).items() if k not in ("out_channels", "use_temporal_attention",
                                                                    "use_temporal_resblock")}
    return ControlNet(hint_channels=3, **cfg, dtype=dtype, device=META, operations=_ops()).state_dict()


# --- text / vision encoders, VAEs ----------------------------------------------------------------------
def clip_l_sd(dtype: torch.dtype) -> StateDict:
    """CLIP-L text model as in a stand-alone clip_l.safetensors: text_model.* + text_projection.weight."""
    from comfy.sd1_clip import SDClipModel

    return SDClipModel(device=META, dtype=dtype).transformer.state_dict()


def t5xxl_sd(dtype: torch.dtype) -> StateDict:
    """T5-XXL encoder as in ComfyUI's stand-alone t5xxl_fp16.safetensors (4.76 B params): encoder.block.N.*,
    encoder.final_layer_norm.weight, shared.weight. The config is fixed (t5_config_xxl.json): full size only."""
    from comfy.text_encoders.sd3_clip import T5XXLModel

    return T5XXLModel(device=META, dtype=dtype).transformer.state_dict()


def sdxl_clip_sd(dtype: torch.dtype) -> StateDict:
    """CLIP-L + CLIP-G exactly as an SDXL checkpoint stores them (ComfyUI's own save conversion)."""
    import comfy.supported_models
    from comfy.sdxl_clip import SDXLClipModel

    sd = SDXLClipModel(device=META, dtype=dtype).state_dict()
    return comfy.supported_models.SDXL(copy.deepcopy(SDXL_UNET)).process_clip_state_dict_for_saving(sd)


def kl_vae_sd(dtype: torch.dtype) -> StateDict:
    """SD/SDXL AutoencoderKL (ComfyUI's default ddconfig in comfy.sd.VAE)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device(META):
        return AutoencoderKL(ddconfig=ddconfig, embed_dim=4).to(dtype).state_dict()


def taesd_sd(latent_channels: int, scale: float, shift: float) -> StateDict:
    """TAESD in the single-file form comfy.sd.VAE detects ("taesd_decoder.1.weight"), with the real
    latent scale/shift that nodes.VAELoader.load_taesd would add for taesd / taef1."""
    from comfy.taesd.taesd import TAESD

    with torch.device(META):
        sd = TAESD(latent_channels=latent_channels).state_dict()
    sd["vae_scale"] = torch.tensor(scale)
    sd["vae_shift"] = torch.tensor(shift)
    return sd


def clip_vision_sd(dtype: torch.dtype) -> StateDict:
    """ViT-L/14 CLIP vision (comfy/clip_vision_config_vitl.json): the smallest config comfy.clip_vision detects."""
    import json
    from pathlib import Path

    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ops

    cfg = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json").read_text())
    model = comfy.clip_model.CLIPVisionModelProjection(cfg, dtype, META, comfy.ops.manual_cast)
    return model.state_dict()


def mmdit_sd(cfg: dict[str, Any], dtype: torch.dtype) -> StateDict:
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT(**copy.deepcopy(cfg), dtype=dtype, device=META, operations=_ops()).state_dict()


# SD3 medium-like MMDiT at depth 2 (hidden = 64 * depth = 128); pos_embed 16x16 patches => up to 256 px.
SD3_TINY = dict(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=2, mlp_ratio=4.0,
                adm_in_channels=2048, pos_embed_max_size=16, pos_embed_scaling_factor=None,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": 4096, "out_features": 128}})


# --- Wan 2.1 and T5 (for the GGUF set) ----------------------------------------------------------------------
# Detection (comfy.model_detection) reads dim from head.modulation, heads = dim // 128, ffn_dim, the depth and the
# patch embedding's input channels; text_dim stays 4096 (UMT5-XXL) as in every Wan 2.1 file. dim 256 makes every
# projection a whole number of 256-element K-quant blocks.
WAN_TINY = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=256, ffn_dim=512, freq_dim=256,
                text_dim=4096, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)


def wan_sd(cfg: dict[str, Any], dtype: torch.dtype) -> StateDict:
    from comfy.ldm.wan.model import WanModel

    return WanModel(**copy.deepcopy(cfg), dtype=dtype, device=META, operations=_ops()).state_dict()


def t5_sd(config_name: str, dtype: torch.dtype) -> StateDict:
    """A T5 encoder exactly as ComfyUI builds it from comfy/text_encoders/<config_name>.json (Hugging Face keys)."""
    import json
    from pathlib import Path

    import comfy.text_encoders.t5

    config = json.loads((Path(comfy.text_encoders.t5.__file__).parent / f"{config_name}.json").read_text())
    return comfy.text_encoders.t5.T5(config, dtype, META, _ops()).state_dict()
