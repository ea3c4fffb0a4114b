"""The "tiny" and "full" model sets: which file, which architecture, which on-disk dtype."""
from __future__ import annotations

import torch

from . import specs as s
from .examples import EXAMPLES
from .gguf_catalog import GGUF_FULL, GGUF_TINY
from .specs import META, Spec, StateDict

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
LORA_RANK = 4
# Linear layers of the first double and single block the tiny LoRA touches (attention, MLP, fused linears).
LORA_TARGETS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.txt_attn.qkv",
                "double_blocks.0.img_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1",
                "single_blocks.0.linear2"]


def _flux(spec: Spec) -> StateDict:
    return s.build_flux(spec)


def _sd15_ckpt(spec: Spec) -> StateDict:
    # A full SD1.x checkpoint in the original LDM layout; the VAE slot holds TAESD (comfy.sd.VAE detects it by
    # key), which keeps the file ~300 MB instead of adding the 160 MB KL VAE. CLIP-L must be full size.
    clip = {k: v for k, v in s.clip_l_sd(spec.dtype).items() if k.startswith("text_model.")}
    return {**s._prefixed(s.unet_sd(spec.config["unet"], spec.dtype), "model.diffusion_model."),
            **s._prefixed(clip, "cond_stage_model.transformer."),
            **s._prefixed(s.taesd_sd(4, 0.18215, 0.0), "first_stage_model.")}


def _sdxl_ckpt(spec: Spec) -> StateDict:
    return {**s._prefixed(s.unet_sd(spec.config["unet"], spec.dtype), "model.diffusion_model."),
            **s.sdxl_clip_sd(spec.dtype),
            **s._prefixed(s.kl_vae_sd(spec.dtype), "first_stage_model.")}


def _sd3(spec: Spec) -> StateDict:
    return s.mmdit_sd(spec.config, spec.dtype)


def _clip_l(spec: Spec) -> StateDict:
    return s.clip_l_sd(spec.dtype)


def _t5xxl(spec: Spec) -> StateDict:
    return s.t5xxl_sd(spec.dtype)


def _taesd(spec: Spec) -> StateDict:
    c = spec.config
    return s.taesd_sd(c["latent_channels"], c["scale"], c["shift"])


def _controlnet(spec: Spec) -> StateDict:
    return s.controlnet_sd(spec.config["unet"], spec.dtype)


def _clip_vision(spec: Spec) -> StateDict:
    return s.clip_vision_sd(spec.dtype)


def _flux_lora(spec: Spec) -> StateDict:
    """ComfyUI's generic LoRA key form: diffusion_model.<module>.lora_{up,down}.weight + .alpha."""
    base = s.build_flux(Spec("flux", "", BF16, spec.config["flux"], _flux))
    out: StateDict = {}
    for target in spec.config["targets"]:
        w = base[target + ".weight"]
        key = "diffusion_model." + target
        out[key + ".lora_up.weight"] = torch.empty(w.shape[0], LORA_RANK, dtype=spec.dtype, device=META)
        out[key + ".lora_down.weight"] = torch.empty(LORA_RANK, w.shape[1], dtype=spec.dtype, device=META)
        out[key + ".alpha"] = torch.tensor(float(LORA_RANK))
    return out


TINY: list[Spec] = [
    Spec("flux_tiny", "diffusion_models/distorch-tiny-flux.safetensors", BF16, s.FLUX_TINY, _flux),
    Spec("sd15_tiny", "checkpoints/distorch-tiny-sd15.safetensors", FP16, {"unet": s.SD15_TINY_UNET,
                                                                          "vae": "taesd"}, _sd15_ckpt),
    Spec("sd3_tiny", "diffusion_models/distorch-tiny-sd3.safetensors", FP16, s.SD3_TINY, _sd3),
    Spec("clip_l", "text_encoders/distorch-clip-l.safetensors", FP16, {"clip": "L"}, _clip_l),
    Spec("taesd", "vae/distorch-taesd.safetensors", FP32,
         {"latent_channels": 4, "scale": 0.18215, "shift": 0.0}, _taesd),
    Spec("taef1", "vae/distorch-taef1.safetensors", FP32,
         {"latent_channels": 16, "scale": 0.3611, "shift": 0.1159}, _taesd),
    Spec("controlnet_sd15_tiny", "controlnet/distorch-tiny-cn-sd15.safetensors", FP16,
         {"unet": s.SD15_TINY_UNET}, _controlnet),
    Spec("clip_vision", "clip_vision/distorch-clip-vision.safetensors", FP16, {"vision": "vitl"}, _clip_vision),
    Spec("flux_tiny_lora", "loras/distorch-tiny-flux-lora.safetensors", BF16,
         {"flux": s.FLUX_TINY, "targets": LORA_TARGETS, "rank": LORA_RANK}, _flux_lora),
]

FULL: list[Spec] = [
    Spec("flux1_dev_full", "diffusion_models/distorch-flux1-dev-full.safetensors", BF16, s.FLUX_DEV, _flux),
    Spec("sdxl_full", "checkpoints/distorch-sdxl-full.safetensors", FP16, {"unet": s.SDXL_UNET, "vae": "kl"},
         _sdxl_ckpt),
    # With the tiny set's CLIP-L (full size already): DualCLIPLoader type flux, the text encoders of Flux.1-dev.
    Spec("t5xxl_full", "text_encoders/distorch-t5xxl-fp16.safetensors", FP16, {"te": "t5xxl"}, _t5xxl),
]

# the stand-ins of the files the example workflows name (scripts/synth/examples.py)
SETS: dict[str, list[Spec]] = {"tiny": TINY + GGUF_TINY, "full": FULL + GGUF_FULL, "examples": EXAMPLES}
