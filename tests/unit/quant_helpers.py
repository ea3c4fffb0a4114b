"""Shared by the quantization unit tests: the gguf numpy reference and the hypothesis strategy for random
blocks with edge values (plus, re-exported, the numpy-only helpers of quant_blocks.py)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from distorch.quant import types as T
from quant_blocks import (  # noqa: F401  (re-exported)
    PAYLOAD_FILLS, SCALE_OFFSETS, SPECIAL_F16, assert_same_floats, mixed_raw, random_raw,
)

PROPERTY = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def reference(raw: np.ndarray, qtype: T.GGMLType) -> np.ndarray:
    """``gguf.quants.dequantize`` of 1-D uint8 blocks, as a 1-D float32 array."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf scales are part of the input space
        return np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType(qtype.type_id)), dtype=np.float32).reshape(-1)


@st.composite
def raw_blocks(draw, qtype: T.GGMLType, max_blocks: int = 6) -> np.ndarray:
    """1..``max_blocks`` blocks: random bytes, where per block the scales may be set to edge values and
    the payload to a constant byte (all-zero, all-one, alternating bits ...)."""
    n = draw(st.integers(1, max_blocks))
    size = qtype.type_size
    data = bytearray(draw(st.binary(min_size=n * size, max_size=n * size)))
    for block in range(n):
        start = block * size
        fill = draw(st.sampled_from(PAYLOAD_FILLS))
        if fill is not None:
            data[start : start + size] = bytes([fill]) * size
        if draw(st.booleans()):
            for offset in SCALE_OFFSETS[qtype]:
                data[start + offset : start + offset + 2] = draw(st.sampled_from(SPECIAL_F16)).to_bytes(2, "little")
    return np.frombuffer(bytes(data), dtype=np.uint8).copy()
