"""Small GGUF files for the reader tests, written with the gguf package's own writer (never ours)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf import quants as gguf_quants

from quant_blocks import random_raw
from distorch.quant import types as T


def write_file(path: Path, tensors: dict[str, tuple[str, np.ndarray]], arch: str = "flux",
               metadata: dict[str, object] | None = None) -> Path:
    """``tensors``: name -> (GGML type name, float32 values of the logical shape, or raw uint8 blocks for the
    types gguf cannot quantize, shaped (rows, row bytes))."""
    writer = GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_array(key, list(value))
    for name, (qtype, values) in tensors.items():
        kind = GGMLQuantizationType[qtype]
        if values.dtype == np.uint8:
            writer.add_tensor(name, values, raw_dtype=kind)
        else:
            writer.add_tensor(name, gguf_quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def k_quant_rows(qtype: T.GGMLType, rows: int, columns: int, seed: int) -> np.ndarray:
    """Random (valid) raw blocks of a K-quant, shaped (rows, row bytes) as gguf's writer takes them."""
    blocks_per_row = columns // qtype.block_size
    return random_raw(qtype, rows * blocks_per_row, seed).reshape(rows, blocks_per_row * qtype.type_size)


def values(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
