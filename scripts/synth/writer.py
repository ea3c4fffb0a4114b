"""Fill meta state dicts with seeded random values and stream them into a safetensors file.

The file is written tensor by tensor (header first, since every shape is known on the meta device), so a
24 GB Flux never exists twice in RAM: at most one tensor is materialised at a time.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

STD = 0.02  # small enough that random forwards stay finite through dozens of blocks
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
              torch.int32: "I32", torch.uint8: "U8"}


def _is_norm_gain(key: str, t: torch.Tensor) -> bool:
    # Norm gains at 1 (not 0.02) keep activations at a sane scale, as a trained model would.
    leaf = key.rsplit(".", 2)
    return t.dim() == 1 and key.endswith((".weight", ".scale")) and any(
        n in part for part in leaf[:-1] for n in ("norm", "ln_", "layer_norm"))


def _disk_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.is_floating_point() else t.dtype


def materialise(key: str, t: torch.Tensor, dtype: torch.dtype, seed: int, device: str) -> torch.Tensor:
    """One tensor's final CPU value: real tensors pass through, meta ones get seeded random values.

    The generator is seeded per key (not by write order), so a tensor's value does not depend on which other
    tensors the file holds. Values differ between cpu and cuda generators; only shapes are promised.
    """
    out_dtype = _disk_dtype(t, dtype)
    if not t.is_meta:
        return t.to(out_dtype).contiguous().cpu()
    if not t.is_floating_point():
        return torch.zeros(t.shape, dtype=out_dtype)
    if _is_norm_gain(key, t):
        return torch.ones(t.shape, dtype=out_dtype)
    gen = torch.Generator(device=device).manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
    val = torch.randn(t.shape, generator=gen, device=device, dtype=torch.float32).mul_(STD)
    return val.to(out_dtype).cpu().contiguous()


def _header(sd: dict[str, torch.Tensor], dtype: torch.dtype, metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    keys = sorted(sd)
    header: dict = {"__metadata__": metadata}
    offset = 0
    for k in keys:
        t = sd[k]
        dt = _disk_dtype(t, dtype)
        n = t.numel() * torch.empty((), dtype=dt).element_size()
        header[k] = {"dtype": _ST_DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned, as safetensors itself writes it
    return raw, keys


def _write_tensor(f: BinaryIO, t: torch.Tensor) -> None:
    if t.numel():
        f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def write_safetensors(path: Path, sd: dict[str, torch.Tensor], dtype: torch.dtype, seed: int, device: str,
                      metadata: dict[str, str]) -> int:
    """Write atomically (temp name, then rename): an interrupted run never leaves a truncated model."""
    raw, keys = _header(sd, dtype, metadata)
    tmp = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in keys:
            _write_tensor(f, materialise(k, sd[k], dtype, seed, device))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def param_count(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in sd.values())
