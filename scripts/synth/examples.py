"""Stand-ins for the model files the example workflows (workflows/*.api.json) name, e.g. ``flux1-dev.safetensors``.

Each is a real ComfyUI architecture built from ComfyUI's own classes, detected by ComfyUI as the model the
example names, but as small as detection allows, so the examples run on a CPU in CI. What differs from the real
file is said per spec. The text encoders T5-XXL and UMT5-XXL have no stand-in here: ComfyUI builds them from
fixed configs whatever the file holds (see tests/host/example_graphs.py for the substitution the tests make).
"""
from __future__ import annotations

import copy
import torch

from . import specs as s
from .specs import META, Spec, StateDict

BF16, FP16 = torch.bfloat16, torch.float16

# Flux.1-dev at 1 double + 3 single blocks: the fewest with which a plan can stream (the staging ring holds two
# blocks, so streaming saves memory only from three streamed blocks up; the double block stays resident).
# txt_in takes 4096 (T5-XXL's width, as the real file); vector_in takes 2048, the pooled width of the text
# encoder the tests drive it with (ComfyUI's sd3 type, see tests/host/example_graphs.py) instead of CLIP-L's 768.
FLUX_EXAMPLE = {**s.FLUX_DEV, "depth": 1, "depth_single_blocks": 3, "vec_in_dim": 2048}

# Wan 2.1 text-to-video: detection reads dim (heads = dim / 128), ffn width, depth and channels from the file;
# text_dim stays 4096 (UMT5-XXL's width), as detection fixes it on ComfyUI 0.3.75.
WAN_T2V_TINY = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=256,
                    freq_dim=256, text_dim=4096, out_dim=16, num_heads=1, num_layers=4, window_size=(-1, -1),
                    qk_norm=True, cross_attn_norm=True, eps=1e-6)

# The Wan 2.1 VAE at its real size (dim 96, read from the file by ComfyUI): 127 M parameters.
WAN_VAE = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)

# SDXL is detected by model_channels 320, transformer_depth [0, 0, 2, 2, 10, 10] (one entry per input
# resblock), context 2048 and adm 2816. SDXL base spends those six resblocks as 3 levels x 2 at 320/640/1280
# channels (2.6 B parameters); here they are 6 levels x 1, all at 320 channels, with 1-deep middle and output
# transformers: the same detected config (so the same model class, CLIP and latent format), 60x fewer weights.
SDXL_SMALL_UNET = {**s.SDXL_UNET, "num_res_blocks": [1] * 6, "channel_mult": [1] * 6, "transformer_depth_middle": 1,
                   "transformer_depth_output": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]}

# Flux's ae.safetensors: the KL autoencoder with 16 latent channels and no quant convs, as ComfyUI builds it.
FLUX_VAE = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _flux(spec: Spec) -> StateDict:
    return s.build_flux(spec)


def _wan(spec: Spec) -> StateDict:
    from comfy.ldm.wan.model import WanModel

    config = copy.deepcopy(spec.config)
    return WanModel(**config, device=META, dtype=spec.dtype, operations=s._ops()).state_dict()


def _wan_vae(spec: Spec) -> StateDict:
    from comfy.ldm.wan.vae import WanVAE

    with torch.device(META):
        return WanVAE(**copy.deepcopy(spec.config)).to(spec.dtype).state_dict()


def _flux_vae(spec: Spec) -> StateDict:
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    params = copy.deepcopy(spec.config)
    with torch.device(META):
        model = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": params},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": params})
        return model.to(spec.dtype).state_dict()


def _sdxl_ckpt(spec: Spec) -> StateDict:
    return {**s._prefixed(s.unet_sd(spec.config["unet"], spec.dtype), "model.diffusion_model."),
            **s.sdxl_clip_sd(spec.dtype),
            **s._prefixed(s.kl_vae_sd(spec.dtype), "first_stage_model.")}


EXAMPLES: list[Spec] = [
    Spec("flux_example", "diffusion_models/distorch-example-flux.safetensors", BF16, FLUX_EXAMPLE, _flux),
    Spec("flux_vae", "vae/distorch-example-flux-vae.safetensors", BF16, FLUX_VAE, _flux_vae),
    Spec("wan_t2v_tiny", "diffusion_models/distorch-tiny-wan21-t2v.safetensors", BF16, WAN_T2V_TINY, _wan),
    Spec("wan_vae", "vae/distorch-example-wan21-vae.safetensors", BF16, WAN_VAE, _wan_vae),
    Spec("sdxl_small", "checkpoints/distorch-example-sdxl.safetensors", FP16,
         {"unet": SDXL_SMALL_UNET, "vae": "kl"}, _sdxl_ckpt),
]
