"""The GGML tensor types the engine reads from GGUF files, as our own table.

A GGML type stores a tensor row as consecutive *blocks*: ``block_size`` elements in ``type_size`` bytes
(Q8_0: 32 elements in 34 bytes, a float16 scale then 32 int8s). Plain types (F32, F16, BF16) are blocks
of one element. A row must hold a whole number of blocks, so only the last (innermost) dimension of a
tensor's logical shape has to be a multiple of ``block_size``; the raw bytes of a tensor are its rows'
blocks back to back.

The ids are GGUF's ``ggml_type`` values, so the number a GGUF reader reports (``gguf``'s
``GGMLQuantizationType`` is an ``IntEnum``) can be passed as is. The engine itself never imports ``gguf``:
this table is checked against ``gguf.GGML_QUANT_SIZES`` by the tests only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import QuantError


@dataclass(frozen=True)
class GGMLType:
    """One GGML tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    name: str
    type_id: int
    block_size: int
    type_size: int

    @property
    def is_quantized(self) -> bool:
        """Whether elements come in multi-element blocks with scales (False for F32, F16, BF16)."""
        return self.block_size > 1

    def __repr__(self) -> str:
        return f"GGMLType({self.name}, id={self.type_id}, {self.block_size} elements in {self.type_size} bytes)"


QK_K = 256  # elements per super-block of the K-quants and IQ4_XS

F32 = GGMLType("F32", 0, 1, 4)
F16 = GGMLType("F16", 1, 1, 2)
Q4_0 = GGMLType("Q4_0", 2, 32, 2 + 16)
Q4_1 = GGMLType("Q4_1", 3, 32, 2 + 2 + 16)
Q5_0 = GGMLType("Q5_0", 6, 32, 2 + 4 + 16)
Q5_1 = GGMLType("Q5_1", 7, 32, 2 + 2 + 4 + 16)
Q8_0 = GGMLType("Q8_0", 8, 32, 2 + 32)
Q2_K = GGMLType("Q2_K", 10, QK_K, QK_K // 16 + QK_K // 4 + 2 + 2)
Q3_K = GGMLType("Q3_K", 11, QK_K, QK_K // 8 + QK_K // 4 + 12 + 2)
Q4_K = GGMLType("Q4_K", 12, QK_K, 2 + 2 + 12 + QK_K // 2)
Q5_K = GGMLType("Q5_K", 13, QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2)
Q6_K = GGMLType("Q6_K", 14, QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2)
IQ4_NL = GGMLType("IQ4_NL", 20, 32, 2 + 16)
IQ4_XS = GGMLType("IQ4_XS", 23, QK_K, 2 + 2 + QK_K // 64 + QK_K // 2)
BF16 = GGMLType("BF16", 30, 1, 2)

SUPPORTED_TYPES: tuple[GGMLType, ...] = (
    F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS,
)
_BY_ID = {t.type_id: t for t in SUPPORTED_TYPES}
_BY_NAME = {t.name: t for t in SUPPORTED_TYPES}

# Types GGUF files may hold that the engine does not dequantize: named so that an error can say which
# one a file holds instead of printing a bare number.
UNSUPPORTED_TYPE_NAMES: dict[int, str] = {
    9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S",
    22: "IQ2_S", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}
_SUPPORTED_LIST = ", ".join(t.name for t in SUPPORTED_TYPES)

QTypeLike = Union[GGMLType, int, str]


def ggml_type(qtype: QTypeLike) -> GGMLType:
    """The table entry for ``qtype``: a :class:`GGMLType`, a GGUF type id (an ``int``, or ``gguf``'s
    ``GGMLQuantizationType``) or a type name (``"Q4_K"``, any case).

    Raises :class:`QuantError` naming the type when it is unknown or not supported.
    """
    if isinstance(qtype, GGMLType):
        if _BY_NAME.get(qtype.name) != qtype:
            raise QuantError(f"{qtype!r} is not one of the supported GGML types ({_SUPPORTED_LIST})",
                             qtype=qtype.name)
        return qtype
    if isinstance(qtype, str):
        name = qtype.upper()
        if name in _BY_NAME:
            return _BY_NAME[name]
        known = name in UNSUPPORTED_TYPE_NAMES.values()
        problem = "is not supported" if known else "is not a known GGML type"
        raise QuantError(f"GGML type {qtype!r} {problem}; supported: {_SUPPORTED_LIST}",
                         qtype=name if known else None)
    if isinstance(qtype, int) and not isinstance(qtype, bool):
        type_id = int(qtype)
        if type_id in _BY_ID:
            return _BY_ID[type_id]
        if type_id in UNSUPPORTED_TYPE_NAMES:
            name = UNSUPPORTED_TYPE_NAMES[type_id]
            raise QuantError(f"GGML type {name} (id {type_id}) is not supported; supported: {_SUPPORTED_LIST}",
                             qtype=name)
        raise QuantError(f"unknown GGML type id {type_id}; supported: {_SUPPORTED_LIST}")
    raise QuantError(f"a GGML type is a GGMLType, an int id or a name, not {type(qtype).__name__} {qtype!r}")


def block_count(shape: Sequence[int], qtype: QTypeLike) -> int:
    """How many blocks a tensor of logical ``shape`` stores; its last dimension must be whole blocks."""
    entry = ggml_type(qtype)
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise QuantError(f"{entry.name} tensor shape {dims} has a negative dimension", qtype=entry.name)
    if entry.is_quantized and (not dims or dims[-1] % entry.block_size != 0):
        last = dims[-1] if dims else "(none: a 0-d tensor)"
        raise QuantError(
            f"{entry.name} tensor shape {dims}: the last dimension {last} is not a multiple of the "
            f"{entry.name} block size {entry.block_size}",
            qtype=entry.name,
        )
    return math.prod(dims) // entry.block_size


def raw_nbytes(shape: Sequence[int], qtype: QTypeLike) -> int:
    """Bytes that a tensor of logical ``shape`` and GGML type ``qtype`` takes in a GGUF file."""
    entry = ggml_type(qtype)
    return block_count(shape, entry) * entry.type_size
