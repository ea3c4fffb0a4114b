"""Triton dequantization kernels: raw GGML bytes in, the output dtype (bf16, fp16 or fp32) out, one pass.

Each kernel equals :mod:`distorch.quant.dequant_torch` (and so ``gguf.quants.dequantize``) bit for bit:

- the float32 math is the reference's, in its order, and kernels are compiled with
  ``enable_fp_fusion=False`` so ``a*b - c`` is never contracted into an FMA (the products here are exact
  in float32, so an FMA would round the same, but the guarantee should not rest on that argument);
- the bf16 output is rounded to nearest even with integer operations on the float32 bits instead of
  Triton's cast, because the Triton interpreter (which the CPU tests run) truncates in that cast. It is
  the same rounding torch's ``.to(torch.bfloat16)`` does; NaN becomes a quiet NaN. fp16 uses Triton's cast,
  which rounds to nearest even on the GPU and in the interpreter.

Layout of the work: the output is cut into *rows* of 32 consecutive elements (one Q8_0/Q4_0/... block,
or one 32-element sub-block of a 256-element K-quant super-block), and a program handles ``ROWS`` rows as
a ``[ROWS, 32]`` tile. Per-row scales are loaded once per row, quant bytes as a ``[ROWS, 32]`` gather, and
the output tile is contiguous, so stores are wide. Offsets are int64: a tensor may exceed 2**31 elements.

Triton is imported lazily by :func:`triton_usable`; this module itself imports it at the top, so import
this module only after that check (``distorch.quant.tensor`` does).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import types as T
from .dequant_torch import iq4_table
from .types import GGMLType

ROW = 32  # output elements per row of a tile


@triton.jit
def _tile(n_rows, ROWS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, 32)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < 32)[None, :]
    return rows, cols, row_mask, mask


@triton.jit
def _u8(ptr, offsets, mask):
    """Bytes at ``ptr + offsets`` as int32 (0..255): bit fields are cut out in int32."""
    return tl.load(ptr + offsets, mask=mask, other=0).to(tl.int32)


@triton.jit
def _f16(ptr, offsets, mask):
    """The little-endian float16 at ``ptr + offsets`` as float32; read as two bytes, so no alignment
    is assumed."""
    low = tl.load(ptr + offsets, mask=mask, other=0).to(tl.uint16)
    high = tl.load(ptr + offsets + 1, mask=mask, other=0).to(tl.uint16)
    return (low | (high << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _store(out, rows, cols, values, mask):
    offsets = rows[:, None] * 32 + cols[None, :]
    if out.dtype.element_ty == tl.bfloat16:
        bits = values.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest, ties to even
        rounded = tl.where(values != values, 0x7FC0, rounded)  # NaN: the carry above could make it +-0
        tl.store(out + offsets, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(out + offsets, values.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _nibble(raw, byte_base, cols, mask):
    """32 four-bit quants from 16 bytes at ``byte_base`` (per row): low nibbles first, then high."""
    byte = _u8(raw, byte_base[:, None] + (cols % 16)[None, :], mask)
    return (byte >> (4 * (cols // 16))[None, :]) & 0xF


# ---- 32-element blocks: one block per row --------------------------------------------------------

@triton.jit
def _q8_0_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 34
    d = _f16(raw, base, row_mask)
    x = tl.load(raw + base[:, None] + 2 + cols[None, :], mask=mask, other=0)
    x = x.to(tl.int8, bitcast=True).to(tl.float32)
    _store(out, rows, cols, x * d[:, None], mask)


@triton.jit
def _q4_0_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 18
    d = _f16(raw, base, row_mask)
    q = (_nibble(raw, base + 2, cols, mask) - 8).to(tl.float32)
    _store(out, rows, cols, d[:, None] * q, mask)


@triton.jit
def _q4_1_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 20
    d = _f16(raw, base, row_mask)
    m = _f16(raw, base + 2, row_mask)
    q = _nibble(raw, base + 4, cols, mask).to(tl.float32)
    _store(out, rows, cols, (d[:, None] * q) + m[:, None], mask)


@triton.jit
def _q5_code(raw, qh_base, cols, mask):
    """Q5_0/Q5_1: low 4 bits as in Q4, bit 4 of element i is bit i of the little-endian 32-bit qh."""
    qh = _u8(raw, qh_base[:, None] + (cols // 8)[None, :], mask)
    high = (qh >> (cols % 8)[None, :]) & 1
    return _nibble(raw, qh_base + 4, cols, mask) | (high << 4)


@triton.jit
def _q5_0_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 22
    d = _f16(raw, base, row_mask)
    q = (_q5_code(raw, base + 2, cols, mask) - 16).to(tl.float32)
    _store(out, rows, cols, d[:, None] * q, mask)


@triton.jit
def _q5_1_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 24
    d = _f16(raw, base, row_mask)
    m = _f16(raw, base + 2, row_mask)
    q = _q5_code(raw, base + 4, cols, mask).to(tl.float32)
    _store(out, rows, cols, (d[:, None] * q) + m[:, None], mask)


@triton.jit
def _iq4_nl_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base = rows * 18
    d = _f16(raw, base, row_mask)
    value = tl.load(table + _nibble(raw, base + 2, cols, mask))  # a 64-byte table: stays in L1
    _store(out, rows, cols, d[:, None] * value, mask)


# ---- 256-element super-blocks: 8 rows (sub-blocks of 32) per super-block -------------------------

@triton.jit
def _k_scale_min(raw, scales_base, sub, row_mask):
    """Q4_K/Q5_K 6-bit scale and min of sub-block ``sub`` (0..7) from the 12 packed scale bytes."""
    j = sub % 4
    a = _u8(raw, scales_base + j, row_mask)      # scale j (low 6 bits), top 2 bits of scale j+4
    b = _u8(raw, scales_base + 4 + j, row_mask)  # min j (low 6 bits), top 2 bits of min j+4
    c = _u8(raw, scales_base + 8 + j, row_mask)  # low 4 bits of scale j+4 | of min j+4 << 4
    first = sub < 4
    scale = tl.where(first, a & 0x3F, (c & 0x0F) | ((a >> 2) & 0x30))
    minimum = tl.where(first, b & 0x3F, (c >> 4) | ((b >> 2) & 0x30))
    return scale.to(tl.float32), minimum.to(tl.float32)


@triton.jit
def _q4_k_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 144, (rows % 8).to(tl.int32)
    d = _f16(raw, base, row_mask)
    dmin = _f16(raw, base + 2, row_mask)
    scale, minimum = _k_scale_min(raw, base + 4, sub, row_mask)
    dl, ml = d * scale, dmin * minimum
    byte = _u8(raw, (base + 16 + (sub // 2) * 32)[:, None] + cols[None, :], mask)
    q = ((byte >> (4 * (sub % 2))[:, None]) & 0xF).to(tl.float32)
    _store(out, rows, cols, dl[:, None] * q - ml[:, None], mask)


@triton.jit
def _q5_k_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 176, (rows % 8).to(tl.int32)
    d = _f16(raw, base, row_mask)
    dmin = _f16(raw, base + 2, row_mask)
    scale, minimum = _k_scale_min(raw, base + 4, sub, row_mask)
    dl, ml = d * scale, dmin * minimum
    qh = _u8(raw, base[:, None] + 16 + cols[None, :], mask)
    byte = _u8(raw, (base + 48 + (sub // 2) * 32)[:, None] + cols[None, :], mask)
    low = (byte >> (4 * (sub % 2))[:, None]) & 0xF
    q = (low | (((qh >> sub[:, None]) & 1) << 4)).to(tl.float32)
    _store(out, rows, cols, dl[:, None] * q - ml[:, None], mask)


@triton.jit
def _q6_k_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 210, (rows % 8).to(tl.int32)
    half, quarter = sub // 4, sub % 4  # 128-element half of the super-block, 32-element part of it
    d = _f16(raw, base + 208, row_mask)
    # scales: one int8 per 16 elements, so two per row
    sc = tl.load(raw + (base + 192 + sub * 2)[:, None] + (cols // 16)[None, :], mask=mask, other=0)
    dl = d[:, None] * sc.to(tl.int8, bitcast=True).to(tl.float32)
    low = _u8(raw, (base + half * 64 + (sub % 2) * 32)[:, None] + cols[None, :], mask)
    low = (low >> (4 * (quarter // 2))[:, None]) & 0xF
    high = _u8(raw, (base + 128 + half * 32)[:, None] + cols[None, :], mask)
    high = (high >> (2 * quarter)[:, None]) & 0x3
    q = ((low | (high << 4)) - 32).to(tl.float32)
    _store(out, rows, cols, dl * q, mask)


@triton.jit
def _q3_k_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 110, (rows % 8).to(tl.int32)
    d = _f16(raw, base + 108, row_mask)
    # 16 six-bit scales, two per row: index k = 2*sub + col // 16
    k = sub[:, None] * 2 + (cols // 16)[None, :]
    low = (_u8(raw, base[:, None] + 96 + k % 8, mask) >> (4 * (k // 8))) & 0xF
    high = (_u8(raw, base[:, None] + 104 + k % 4, mask) >> (2 * (k // 4))) & 0x3
    dl = d[:, None] * ((low | (high << 4)) - 32).to(tl.float32)
    ql = _u8(raw, (base + 32 + (sub // 4) * 32)[:, None] + cols[None, :], mask)
    ql = (ql >> (2 * (sub % 4))[:, None]) & 0x3
    hbit = (_u8(raw, base[:, None] + cols[None, :], mask) >> sub[:, None]) & 1
    q = (ql - ((hbit ^ 1) << 2)).to(tl.float32)  # a clear hmask bit subtracts 4
    _store(out, rows, cols, dl * q, mask)


@triton.jit
def _q2_k_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 84, (rows % 8).to(tl.int32)
    d = _f16(raw, base + 80, row_mask)
    dmin = _f16(raw, base + 82, row_mask)
    sc = _u8(raw, (base + sub * 2)[:, None] + (cols // 16)[None, :], mask)  # one byte per 16 elements
    dl = d[:, None] * (sc & 0xF).to(tl.float32)
    ml = dmin[:, None] * (sc >> 4).to(tl.float32)
    byte = _u8(raw, (base + 16 + (sub // 4) * 32)[:, None] + cols[None, :], mask)
    q = ((byte >> (2 * (sub % 4))[:, None]) & 0x3).to(tl.float32)
    _store(out, rows, cols, dl * q - ml, mask)


@triton.jit
def _iq4_xs_kernel(raw, out, n_rows, table, ROWS: tl.constexpr):
    rows, cols, row_mask, mask = _tile(n_rows, ROWS)
    base, sub = (rows // 8) * 136, (rows % 8).to(tl.int32)
    d = _f16(raw, base, row_mask)
    low = (_u8(raw, base + 4 + sub // 2, row_mask) >> (4 * (sub % 2))) & 0xF
    high = (_u8(raw, base + 2 + sub // 4, row_mask) >> (2 * (sub % 4))) & 0x3
    dl = d * ((low | (high << 4)) - 32).to(tl.float32)
    code = _nibble(raw, base + 8 + sub * 16, cols, mask)
    _store(out, rows, cols, dl[:, None] * tl.load(table + code), mask)


KERNELS = {
    T.Q8_0: _q8_0_kernel, T.Q4_0: _q4_0_kernel, T.Q4_1: _q4_1_kernel, T.Q5_0: _q5_0_kernel,
    T.Q5_1: _q5_1_kernel, T.IQ4_NL: _iq4_nl_kernel, T.Q2_K: _q2_k_kernel, T.Q3_K: _q3_k_kernel,
    T.Q4_K: _q4_k_kernel, T.Q5_K: _q5_k_kernel, T.Q6_K: _q6_k_kernel, T.IQ4_XS: _iq4_xs_kernel,
}
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ROWS_PER_PROGRAM = 64  # 2048 output elements per program, 16 per thread at 4 warps
NUM_WARPS = 4


def dequantize_into(raw: torch.Tensor, qtype: GGMLType, out: torch.Tensor,
                    rows_per_program: int = ROWS_PER_PROGRAM, num_warps: int = NUM_WARPS) -> None:
    """Write the elements of ``raw`` (1-D uint8, whole blocks of ``qtype``) into the first elements of
    ``out`` (1-D, contiguous, dtype in :data:`OUT_DTYPES`), on the current stream of ``raw``'s device.

    The caller checks sizes and devices (:func:`distorch.quant.tensor.dequantize` does).
    """
    n_rows = raw.numel() // qtype.type_size * (qtype.block_size // ROW)
    if n_rows == 0:
        return
    table = iq4_table(raw.device) if qtype in (T.IQ4_NL, T.IQ4_XS) else raw  # unused by the others
    grid = (triton.cdiv(n_rows, rows_per_program),)
    KERNELS[qtype][grid](raw, out, n_rows, table, ROWS=rows_per_program, num_warps=num_warps,
                         enable_fp_fusion=False)
