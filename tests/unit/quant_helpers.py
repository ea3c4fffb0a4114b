"""Shared by the quantization tests: the gguf numpy reference, bitwise float comparison, random blocks.

Random bytes are valid GGML blocks of every type (any bit pattern decodes), but their float16 scales are
often NaN or Inf, so results are compared as bits with NaN equality: same NaN positions, and every other
element identical in all 32 (or 16) bits, which also tells +0 from -0 and +Inf from -Inf.
"""
from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from distorch.quant import types as T

PROPERTY = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

QUANTIZED_TYPES = [t for t in T.SUPPORTED_TYPES if t.is_quantized]

# Byte offsets (within one block) of every float16 scale field: where the edge values go.
SCALE_OFFSETS: dict[T.GGMLType, tuple[int, ...]] = {
    T.F16: (0,), T.BF16: (0,), T.F32: (0, 2),
    T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.IQ4_NL: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.IQ4_XS: (0,),
}
# float16 bit patterns at the edges: +-0, +-Inf, NaN, smallest and largest subnormal, largest finite, 1.0.
SPECIAL_F16 = (0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x0001, 0x03FF, 0x7BFF, 0xFBFF, 0x3C00)
PAYLOAD_FILLS = (None, 0x00, 0xFF, 0x80, 0x7F, 0x55, 0xAA)  # None: keep the random payload


def reference(raw: np.ndarray, qtype: T.GGMLType) -> np.ndarray:
    """``gguf.quants.dequantize`` of 1-D uint8 blocks, as a 1-D float32 array."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf scales are part of the input space
        return np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType(qtype.type_id)), dtype=np.float32).reshape(-1)


_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_same_floats(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> None:
    """``actual`` equals ``expected`` bit for bit, except that any NaN equals any NaN (same positions)."""
    expected = torch.as_tensor(expected)
    actual = actual.detach().cpu()
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    nan_a, nan_e = actual.isnan(), expected.isnan()
    assert torch.equal(nan_a, nan_e), f"NaN positions differ at {(nan_a != nan_e).nonzero()[:8].flatten().tolist()}"
    ints = _SAME_SIZE_INT[actual.dtype]
    differ = (actual.view(ints) != expected.view(ints)) & ~nan_a
    if differ.any():
        where = differ.nonzero()[:8].flatten()
        raise AssertionError(f"{int(differ.sum())} elements differ, first at {where.tolist()}: "
                             f"{actual.flatten()[where].tolist()} != {expected.flatten()[where].tolist()}")


def random_raw(qtype: T.GGMLType, n_blocks: int, seed: int) -> np.ndarray:
    """``n_blocks`` blocks of uniformly random bytes (about 1 in 32 f16 scales is NaN or Inf)."""
    return np.random.default_rng(seed).integers(0, 256, size=n_blocks * qtype.type_size, dtype=np.uint8)


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


def mixed_raw(qtype: T.GGMLType, n_blocks: int, seed: int) -> np.ndarray:
    """Random blocks where the first ones carry every special float16 scale in every scale field and
    the next ones a constant payload byte: one array that covers the edges (for the slower tests)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, qtype.type_size), dtype=np.uint8)
    block = 0
    for offset in SCALE_OFFSETS[qtype]:
        for bits in SPECIAL_F16:
            if block < n_blocks:
                raw[block, offset : offset + 2] = np.frombuffer(bits.to_bytes(2, "little"), dtype=np.uint8)
                block += 1
    for fill in PAYLOAD_FILLS[1:]:
        if block < n_blocks:
            raw[block] = fill
            block += 1
    return raw.reshape(-1)
