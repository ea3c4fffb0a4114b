"""Write a state dict of meta tensors as a GGUF file of seeded random weights, tensor by tensor.

The tensor types follow ComfyUI-GGUF's converter: 1-D tensors, tensors of at most 1024 elements and the
architecture's high-precision keys stay in the plain type (``plain``: F32 or F16); a tensor whose last dimension
is not a whole number of blocks falls back to F16; everything else gets ``qtype``. Tensors of more than 4
dimensions (Wan's patch embedding) are stored 2-D with their original shape in ``comfy.gguf.orig_shape.<name>``.

Values: plain tensors and the types ``gguf.quants.quantize`` supports (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, BF16) are
the seeded random values of ``writer.materialise`` quantized; Q8_0 is quantized with torch on the drawing device
(bitwise what gguf's quantizer gives, tested), so full-size models are quick on a GPU machine. K-quants and IQ4
types, which gguf cannot quantize, are random bytes -- every byte pattern is a valid block -- with their float16
scale fields set so the values are centred with a standard deviation of ``writer.STD``.

``damage`` writes a broken file for the error tests: ``truncate`` (cut inside a tensor's data),
``unsupported_type`` (one tensor stored as IQ2_XXS, a type gguf knows and the engine does not) and
``unknown_type`` (one tensor's type id patched to 99, which no GGUF reader knows).
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .writer import STD, materialise

MAX_DIMS = 4
SMALL_TENSOR = 1024  # elements; ComfyUI-GGUF's QUANTIZATION_THRESHOLD
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
UNKNOWN_TYPE_ID = 99
# Byte offsets of the float16 scale (d) and min scale (dmin, or None) of every type written as random blocks.
SCALE_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None),
                "IQ4_NL": (0, None), "IQ4_XS": (0, None)}
QUANTIZED_BY_GGUF = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"}


@dataclass(frozen=True)
class TensorPlan:
    key: str  # the state-dict key: where values come from
    name: str  # the tensor's name in the file
    qtype: str
    logical: tuple[int, ...]
    stored: tuple[int, ...]


def _gguf():
    import gguf

    return gguf


def tensor_type(key: str, shape: tuple[int, ...], cfg: dict[str, Any]) -> str:
    """The GGML type ComfyUI-GGUF's converter would pick for this tensor."""
    gguf = _gguf()
    qtype, plain = cfg["qtype"], cfg.get("plain", "F32")
    if len(shape) <= 1 or math.prod(shape) <= SMALL_TENSOR or any(h in key for h in cfg.get("hiprec", ())):
        return plain
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    return qtype if shape[-1] % block == 0 else "F16"


def plan_tensors(sd: dict[str, torch.Tensor], cfg: dict[str, Any], names: dict[str, str]) -> list[TensorPlan]:
    """Name, type and stored shape of every floating tensor, in key order."""
    plans = []
    for key in sorted(sd):
        t = sd[key]
        if not t.is_floating_point():
            continue
        logical = tuple(t.shape)
        stored = logical if len(logical) <= MAX_DIMS else (logical[0], math.prod(logical[1:]))
        plans.append(TensorPlan(key, names.get(key, key), tensor_type(key, stored, cfg), logical, stored))
    return plans


def llama_cpp_names(keys: list[str], arch: str) -> dict[str, str]:
    """Hugging Face keys (ComfyUI's T5 / LLM keys) to llama.cpp tensor names, by gguf's own converter map."""
    gguf = _gguf()
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    blocks = 1 + max((int(k.split(".")[2]) for k in keys if k.startswith(("encoder.block.", "model.layers."))),
                     default=0)
    name_map = gguf.get_tensor_name_map(model_arch, blocks)
    names = {}
    for key in keys:
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"gguf's {arch} tensor map has no name for {key!r}")
        names[key] = name
    return names


# --- values ----------------------------------------------------------------------------------------------
def _rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)


def quantize_q8_0(values: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks of ``values`` (float32, any device) as uint8 on the same device: gguf's quantizer, in torch."""
    blocks = values.reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = blocks * inverse
    magnitude = scaled.abs()
    whole = magnitude.floor()
    rounded = torch.sign(scaled) * (whole + torch.floor(2 * (magnitude - whole)))  # gguf's np_roundf
    return torch.cat([d.to(torch.float16).view(torch.uint8), rounded.to(torch.int8).view(torch.uint8)], dim=1)


def random_blocks(qtype: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """``n_blocks`` random blocks of ``qtype`` with scale fields set for centred values of std ``STD``."""
    gguf = _gguf()
    kind = gguf.GGMLQuantizationType[qtype]
    size = gguf.GGML_QUANT_SIZES[kind][1]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d_at, m_at = SCALE_FIELDS[qtype]
    # Values are d * f(bytes) - dmin * g(bytes): measure f and g on a sample, then pick d and dmin.
    sample = raw[: min(n_blocks, 256)].copy()
    f = _dequantize_with(sample, kind, d_at, m_at, 1.0, 0.0)
    g = _dequantize_with(sample, kind, d_at, m_at, 0.0, 1.0) if m_at is not None else np.zeros_like(f)
    ratio = -float(f.mean()) / float(g.mean()) if m_at is not None and g.mean() != 0 else 0.0
    unit = f + ratio * g
    d = STD / max(float(unit.std()), 1e-12)
    _set_scales(raw, d_at, m_at, d, d * ratio)
    return raw.reshape(-1)


def _set_scales(raw: np.ndarray, d_at: int, m_at: int | None, d: float, dmin: float) -> None:
    raw[:, d_at : d_at + 2] = np.frombuffer(np.float16(d).tobytes(), dtype=np.uint8)
    if m_at is not None:
        raw[:, m_at : m_at + 2] = np.frombuffer(np.float16(dmin).tobytes(), dtype=np.uint8)


def _dequantize_with(sample: np.ndarray, kind: Any, d_at: int, m_at: int | None, d: float, dmin: float) -> np.ndarray:
    probe = sample.copy()
    _set_scales(probe, d_at, m_at, d, dmin)
    return np.asarray(_gguf().quants.dequantize(probe.reshape(-1), kind), dtype=np.float64)


def tensor_bytes(plan: TensorPlan, t: torch.Tensor, seed: int, device: str) -> np.ndarray:
    """The raw GGML bytes of one tensor (uint8)."""
    gguf = _gguf()
    kind = gguf.GGMLQuantizationType[plan.qtype]
    if plan.qtype in SCALE_FIELDS:
        block = gguf.GGML_QUANT_SIZES[kind][0]
        return random_blocks(plan.qtype, math.prod(plan.stored) // block, _rng(plan.key, seed))
    values = materialise(plan.key, t, torch.float32, seed, device) if t.is_meta else t.to(torch.float32).cpu()
    values = values.reshape(plan.stored)
    if plan.qtype == "F32":
        return values.numpy().reshape(-1).view(np.uint8)
    if plan.qtype == "F16":
        return values.to(torch.float16).numpy().reshape(-1).view(np.uint8)
    if plan.qtype == "Q8_0":
        return quantize_q8_0(values.to(device)).cpu().numpy().reshape(-1)
    if plan.qtype in QUANTIZED_BY_GGUF:
        return np.asarray(gguf.quants.quantize(values.numpy(), kind)).reshape(-1).view(np.uint8)
    raise ValueError(f"the synthesizer cannot write {plan.qtype}")


# --- the file ----------------------------------------------------------------------------------------------
def write_gguf(path: Path, sd: dict[str, torch.Tensor], cfg: dict[str, Any], seed: int, device: str,
               metadata: dict[str, str]) -> int:
    """Write atomically (temp name, then rename); returns the file size. ``cfg``: ``arch``, ``qtype``, ``plain``,
    ``hiprec`` (key substrings kept plain), ``names`` ("t5encoder"/"llama"/...: llama.cpp names), ``damage``."""
    gguf = _gguf()
    names = llama_cpp_names(sorted(sd), cfg["names"]) if cfg.get("names") else {}
    plans = plan_tensors(sd, cfg, names)
    damage = cfg.get("damage")
    damaged = _damaged_index(plans) if damage else None
    if damage == "unsupported_type":
        plan = plans[damaged]
        plans[damaged] = TensorPlan(plan.key, plan.name, "IQ2_XXS", plan.logical, plan.stored)
    tmp = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), cfg["arch"])
    for key, value in metadata.items():
        writer.add_string(key, value)
    for plan in plans:
        if plan.stored != plan.logical:
            writer.add_array(ORIG_SHAPE_PREFIX + plan.name, list(plan.logical))
        kind = gguf.GGMLQuantizationType[plan.qtype]
        block, size = gguf.GGML_QUANT_SIZES[kind]
        byte_shape = (*plan.stored[:-1], plan.stored[-1] // block * size)
        writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for plan in plans:
        if plan.qtype == "IQ2_XXS":  # damage: bytes of the right size, a type nobody here decodes
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ2_XXS]
            data = _rng(plan.key, seed).integers(0, 256, math.prod(plan.stored) // block * size, dtype=np.uint8)
        else:
            data = tensor_bytes(plan, sd[plan.key], seed, device)
        writer.write_tensor_data(data)
    writer.close()
    if damage == "truncate":
        os.truncate(tmp, tmp.stat().st_size * 3 // 5)
    elif damage == "unknown_type":
        _patch_type_id(tmp, plans[damaged].name, UNKNOWN_TYPE_ID)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def _damaged_index(plans: list[TensorPlan]) -> int:
    """The tensor a damaged file breaks: the last one whose rows are whole 256-element blocks (IQ2_XXS's)."""
    return max(i for i, plan in enumerate(plans) if plan.stored[-1] % 256 == 0)


def _patch_type_id(path: Path, tensor_name: str, type_id: int) -> None:
    """Overwrite one tensor's type id in the header (its info: name, n_dims, dims, type, offset)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    info = next(t.field for t in reader.tensors if t.name == tensor_name)
    n_dims = int(info.parts[2][0])
    at = info.offset + 8 + len(tensor_name.encode()) + 4 + 8 * n_dims
    del reader
    with open(path, "rb+") as f:
        f.seek(at)
        f.write(np.uint32(type_id).tobytes())
