"""The GGUF models of the "tiny" and "full" sets: real architectures in several GGML types, and broken files.

A spec's ``config["gguf"]`` says how scripts/synth/gguf_writer.py writes it (``arch``, ``qtype``, ``plain``,
``hiprec``, ``names``, ``damage``); ``config["model"]`` is the architecture's own config (hashed for the cache).
"""
from __future__ import annotations

import torch

from . import specs as s
from .specs import Spec, StateDict

FP32 = torch.float32


def _flux(spec: Spec) -> StateDict:
    return s.build_flux(Spec("flux", "", FP32, spec.config["model"], _flux))


def _sd3(spec: Spec) -> StateDict:
    return s.mmdit_sd(spec.config["model"], FP32)


def _wan(spec: Spec) -> StateDict:
    return s.wan_sd(spec.config["model"], FP32)


def _t5(spec: Spec) -> StateDict:
    return s.t5_sd(spec.config["model"], FP32)


def _gguf(name: str, relpath: str, build, model: dict, **gguf: object) -> Spec:
    return Spec(name, relpath, FP32, {"model": model, "gguf": gguf}, build)


DIFFUSION = "diffusion_models/"
TEXT = "text_encoders/"
WAN_HIPREC = [".modulation"]  # bare nn.Parameters, kept F32 as ComfyUI-GGUF's converter keeps them
SD3_HIPREC = ["pos_embed"]  # a bare buffer

GGUF_TINY: list[Spec] = [
    _gguf("flux_tiny_q8_0", DIFFUSION + "distorch-tiny-flux-Q8_0.gguf", _flux, s.FLUX_TINY,
          arch="flux", qtype="Q8_0", plain="F32"),
    _gguf("flux_tiny_q4_k", DIFFUSION + "distorch-tiny-flux-Q4_K.gguf", _flux, s.FLUX_TINY,
          arch="flux", qtype="Q4_K", plain="F16"),
    _gguf("flux_tiny_q5_k", DIFFUSION + "distorch-tiny-flux-Q5_K.gguf", _flux, s.FLUX_TINY,
          arch="flux", qtype="Q5_K", plain="F16"),
    _gguf("sd3_tiny_q8_0", DIFFUSION + "distorch-tiny-sd3-Q8_0.gguf", _sd3, s.SD3_TINY,
          arch="sd3", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC),
    _gguf("wan_tiny_q4_k", DIFFUSION + "distorch-tiny-wan-Q4_K.gguf", _wan, s.WAN_TINY,
          arch="wan", qtype="Q4_K", plain="F16", hiprec=WAN_HIPREC),
    _gguf("t5_base_q4_k", TEXT + "distorch-t5-base-Q4_K.gguf", _t5, "t5_config_base",
          arch="t5encoder", qtype="Q4_K", plain="F16", names="t5encoder"),
    # Broken files for the error tests (small: the tiny SD3).
    _gguf("gguf_truncated", DIFFUSION + "distorch-bad-truncated.gguf", _sd3, s.SD3_TINY,
          arch="sd3", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC, damage="truncate"),
    _gguf("gguf_unsupported_type", DIFFUSION + "distorch-bad-iq2-xxs.gguf", _sd3, s.SD3_TINY,
          arch="sd3", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC, damage="unsupported_type"),
    _gguf("gguf_unknown_type", DIFFUSION + "distorch-bad-type-99.gguf", _sd3, s.SD3_TINY,
          arch="sd3", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC, damage="unknown_type"),
    # Files of another kind in a folder: an LLM among the diffusion models, a diffusion model among the encoders.
    _gguf("gguf_llm_in_diffusion_models", DIFFUSION + "distorch-bad-llama-arch.gguf", _sd3, s.SD3_TINY,
          arch="llama", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC),
    _gguf("gguf_sd3_in_text_encoders", TEXT + "distorch-bad-sd3-arch.gguf", _sd3, s.SD3_TINY,
          arch="sd3", qtype="Q8_0", plain="F16", hiprec=SD3_HIPREC),
]

# Flux.1-dev-shaped, for bench/bench_gguf.py on the GPU machine (scripts/synth_models.py --set full --only ...).
GGUF_FULL: list[Spec] = [
    _gguf("flux1_dev_q8_0_full", DIFFUSION + "distorch-flux1-dev-Q8_0.gguf", _flux, s.FLUX_DEV,
          arch="flux", qtype="Q8_0", plain="F32"),
    _gguf("flux1_dev_q4_k_full", DIFFUSION + "distorch-flux1-dev-Q4_K.gguf", _flux, s.FLUX_DEV,
          arch="flux", qtype="Q4_K", plain="F32"),
]
