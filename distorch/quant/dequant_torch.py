"""Pure-torch dequantizers: raw GGML blocks (a 1-D uint8 tensor, any device) to float32.

Each one equals ``gguf.quants.dequantize`` (the ``gguf`` package's numpy reference) bit for bit in
float32, because it does the same float32 operations in the same order: every scale product
(``d * sc``, ``dmin * m``) first, then ``scale * q``, then ``- dmin*m`` or ``+ m`` as a separate rounding
step. (All those products are in fact exact in float32 -- a float16 mantissa times a scale of at most
8 bits times a quant of at most 8 bits needs at most 24 bits -- so only the final add or subtract
rounds; keeping the reference's order makes that hold without relying on the argument.)

Everything is vectorised over blocks: a tensor's blocks are an ``(n_blocks, type_size)`` uint8 matrix
and bit fields are unpacked with shifts over a handful of fixed positions (small Python loops over
*bit positions*, never over blocks). No constant tensor is built on the host per call, so on CUDA
nothing here synchronises with the host; only IQ4's 16-entry value table is copied to a device once.

This is the reference the Triton kernels are tested against and the fallback wherever Triton is not
usable; it allocates temporaries (several times the output size), the Triton path does not.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import QuantError
from . import types as T
from .types import GGMLType, QTypeLike, ggml_type

Dequantizer = Callable[[torch.Tensor], torch.Tensor]  # (n_blocks, type_size) uint8 -> (n_blocks, block_size) float32

# IQ4_NL's non-linear 4-bit code book (also IQ4_XS's): quant index -> value, before the block scale.
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_iq4_tables: dict[torch.device, torch.Tensor] = {}


def iq4_table(device: torch.device) -> torch.Tensor:
    """IQ4's code book as float32 on ``device``, made once per device (the first call copies 64 bytes)."""
    table = _iq4_tables.get(device)
    if table is None:
        table = torch.tensor(IQ4_VALUES, dtype=torch.float32).to(device)
        _iq4_tables[device] = table
    return table


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 stored at byte ``start`` of every block, as float32, shape ``(n_blocks, 1)``."""
    return blocks[:, start : start + 2].view(torch.float16).to(torch.float32)


def _fields(x: torch.Tensor, bits: int, count: int, dim: int) -> torch.Tensor:
    """The ``count`` ``bits``-wide fields of every byte of ``x``, lowest first, stacked at ``dim``:
    what the reference's ``x >> np.array([0, bits, 2*bits, ...])`` broadcast produces."""
    mask = (1 << bits) - 1
    return torch.stack([(x >> (i * bits)) & mask for i in range(count)], dim=dim)


def _low_high_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """``(..., k)`` bytes to ``(..., 2k)`` 4-bit quants: all low nibbles, then all high nibbles."""
    return _fields(qs, 4, 2, dim=-2).flatten(-2)


def _signed(q: torch.Tensor, offset: int) -> torch.Tensor:
    """Unsigned quant codes minus ``offset``, as float32 (integer arithmetic first, like the reference)."""
    return (q.to(torch.int16) - offset).to(torch.float32)


# ---- plain types ---------------------------------------------------------------------------------

def _f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.float32).clone()  # a copy: the result must never alias the arena


def _f16_plain(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.float16).to(torch.float32)


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.view(torch.bfloat16).to(torch.float32)  # exact: bf16 is the top half of a float32


# ---- 32-element blocks ---------------------------------------------------------------------------

def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    x = blocks[:, 2:].view(torch.int8).to(torch.float32)
    return x * d


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = _signed(_low_high_nibbles(blocks[:, 2:]), 8)
    return d * q


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _low_high_nibbles(blocks[:, 4:]).to(torch.float32)
    return (d * q) + m


def _q5_quants(blocks: torch.Tensor, qh_start: int) -> torch.Tensor:
    """Q5_0/Q5_1 5-bit codes: 4 low bits as in Q4, bit 4 of element i is bit i of the 32-bit ``qh``
    (little-endian, so bit i % 8 of its byte i // 8)."""
    qh = _fields(blocks[:, qh_start : qh_start + 4], 1, 8, dim=-1).flatten(-2)
    ql = _low_high_nibbles(blocks[:, qh_start + 4 :])
    return ql | (qh << 4)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = _signed(_q5_quants(blocks, 2), 16)
    return d * q


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _q5_quants(blocks, 4).to(torch.float32)
    return (d * q) + m


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks, 0)
    q = _low_high_nibbles(blocks[:, 2:])
    return d * iq4_table(blocks.device)[q.long()]


# ---- 256-element super-blocks --------------------------------------------------------------------

def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    # two halves of 128 elements; quant i of a half is 2-bit field (i // 32) of byte i % 32
    q = _fields(qs.reshape(n, 2, 32), 2, 4, dim=-2).reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, T.QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = _f16(blocks, 108)
    # 16 six-bit scales: low 4 bits from the nibbles of bytes 0-7, high 2 bits from the fields of bytes 8-11
    low = _fields(scales[:, :8], 4, 2, dim=-2).reshape(n, 16)
    high = _fields(scales[:, 8:], 2, 4, dim=-2).reshape(n, 16)
    sc = _signed(low | (high << 4), 32)
    dl = (d * sc).reshape(n, 16, 1)
    ql = _fields(qs.reshape(n, 2, 32), 2, 4, dim=-2).reshape(n, 16, 16)
    qh = _fields(hmask.reshape(n, 1, 32), 1, 8, dim=-2).reshape(n, 16, 16) ^ 1  # a set bit means no -4
    q = (ql.to(torch.int16) - (qh << 2).to(torch.int16)).to(torch.float32)
    return (dl * q).reshape(n, T.QK_K)


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins packed in 12 bytes, as ``(n, 8)`` each.
    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for
    the mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and of mins 4-7 (high nibble)."""
    n = scales.shape[0]
    s03, m03, low47 = scales.reshape(n, 3, 4).unbind(dim=1)
    sc = torch.cat([s03 & 0x3F, (low47 & 0x0F) | ((s03 >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m03 & 0x3F, (low47 >> 4) | ((m03 >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k_like(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K and Q5_K share the header (d, dmin, 12 scale bytes) and ``(d*sc) * q - dmin*m``."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales_mins(blocks[:, 4:16])
    dl = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    ml = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    return (dl * q.to(torch.float32) - ml).reshape(n, T.QK_K)


def _k_low_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K 4-bit quants: each 32-byte group gives two sub-blocks, low nibbles then high."""
    n = qs.shape[0]
    return _fields(qs.reshape(n, 4, 32), 4, 2, dim=-2).reshape(n, 8, 32)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    return _q4_k_like(blocks, _k_low_nibbles(blocks[:, 16:]))


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    qh = _fields(blocks[:, 16:48], 1, 8, dim=-2)  # sub-block s takes bit s of qh byte (i % 32)
    return _q4_k_like(blocks, _k_low_nibbles(blocks[:, 48:]) | (qh << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)
    d = _f16(blocks, 208)
    dl = (d * scales).reshape(n, 16, 1)
    low = _fields(ql.reshape(n, 2, 64), 4, 2, dim=-2).reshape(n, 8, 32)
    high = _fields(qh.reshape(n, 2, 32), 2, 4, dim=-2).reshape(n, 8, 32)
    q = _signed(low | (high << 4), 32).reshape(n, 16, 16)
    return (dl * q).reshape(n, T.QK_K)


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    high = _fields(blocks[:, 2:4], 2, 4, dim=-1).reshape(n, 8)  # 16-bit little-endian, 2 bits per sub-block
    low = _fields(blocks[:, 4:8], 4, 2, dim=-1).reshape(n, 8)
    sc = _signed(low | (high << 4), 32)
    dl = (d * sc).reshape(n, 8, 1)
    q = _low_high_nibbles(blocks[:, 8:].reshape(n, 8, 16))
    return (dl * iq4_table(blocks.device)[q.long()]).reshape(n, T.QK_K)


DEQUANTIZERS: dict[GGMLType, Dequantizer] = {
    T.F32: _f32, T.F16: _f16_plain, T.BF16: _bf16,
    T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1, T.IQ4_NL: _iq4_nl,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k, T.IQ4_XS: _iq4_xs,
}


def raw_blocks(raw: torch.Tensor, qtype: QTypeLike) -> torch.Tensor:
    """``raw`` (1-D uint8, whole blocks) as an ``(n_blocks, type_size)`` matrix, checked."""
    entry = ggml_type(qtype)
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise QuantError(f"{entry.name} raw data must be a 1-D uint8 tensor, got {raw.dtype} of shape "
                         f"{tuple(raw.shape)}", qtype=entry.name)
    if raw.numel() % entry.type_size:
        raise QuantError(f"{raw.numel()} bytes are not whole {entry.name} blocks of {entry.type_size} bytes",
                         qtype=entry.name)
    if not raw.is_contiguous() or raw.storage_offset() % 4:
        # Scales are read by viewing byte pairs as float16 (and F32 data as float32), which needs the
        # bytes aligned; arena and staging views always are (256-byte offsets), so this copy is rare.
        raw = raw.clone()
    return raw.view(-1, entry.type_size)


def dequantize_torch(raw: torch.Tensor, qtype: QTypeLike, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The elements of ``raw`` (1-D uint8 holding whole blocks of ``qtype``) as a new 1-D tensor.

    Computed in float32 on ``raw``'s device, equal bit for bit to ``gguf.quants.dequantize``, then cast
    to ``out_dtype`` (round to nearest even for bf16/fp16), so any ``out_dtype`` equals float32-then-cast.
    """
    entry = ggml_type(qtype)
    blocks = raw_blocks(raw, entry)
    if blocks.shape[0] == 0:
        return torch.empty(0, dtype=out_dtype, device=raw.device)
    values = DEQUANTIZERS[entry](blocks).reshape(-1)
    return values if out_dtype == torch.float32 else values.to(out_dtype)
