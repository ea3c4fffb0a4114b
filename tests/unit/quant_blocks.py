"""Numpy-only helpers of the quantization tests (the GPU tests use them too, where gguf and hypothesis may
be missing): edge-value blocks, random blocks, and bitwise float comparison.

Random bytes are valid GGML blocks of every type (any bit pattern decodes), but their float16 scales are
often NaN or Inf, so results are compared as bits with NaN equality: same NaN positions, and every other
element identical in all 32 (or 16) bits, which also tells +0 from -0 and +Inf from -Inf.
"""
from __future__ import annotations

import numpy as np
import torch

from distorch.quant import types as T

# Byte offsets (within one block) of every float16 scale field: where the edge values go.
SCALE_OFFSETS: dict[T.GGMLType, tuple[int, ...]] = {
    T.F16: (0,), T.BF16: (0,), T.F32: (0, 2),
    T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.IQ4_NL: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.IQ4_XS: (0,),
}
# float16 bit patterns at the edges: +-0, +-Inf, NaN, smallest and largest subnormal, largest finite, 1.0.
SPECIAL_F16 = (0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x0001, 0x03FF, 0x7BFF, 0xFBFF, 0x3C00)
PAYLOAD_FILLS = (None, 0x00, 0xFF, 0x80, 0x7F, 0x55, 0xAA)  # None: keep the random payload

_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_same_floats(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> None:
    """``actual`` equals ``expected`` bit for bit, except that any NaN equals any NaN (same positions)."""
    expected = torch.as_tensor(expected).detach().cpu()
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
