"""A GGUF file's tensors as raw GGML bytes, memory-mapped from the file, with their types and logical shapes.

The ``gguf`` package parses the header; tensor data is never copied here: every tensor is a 1-D uint8 view of
the file's mapping, opened copy-on-write, so a later in-place write (nothing of ours does one) would land in
private memory and never reach the file. The views keep the mapping alive; the parser itself is dropped.

Shapes are given outermost first, as torch has them (GGUF lists dimensions innermost first). A tensor may
record its original shape in the metadata (``comfy.gguf.orig_shape.<name>``, written by ComfyUI-GGUF's
converter for SD1/SDXL convolutions, whose blocks are laid out over a reshaped ``(n / 256, 256)`` tensor): then
``shape`` is that original shape and ``stored_shape`` the one the blocks follow.

Whatever cannot be read -- not a GGUF, cut short, a tensor type the engine does not dequantize -- raises
:class:`GGUFError` naming the file and, where one is at fault, the tensor.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np
import torch

from .errors import DistorchError, QuantError
from .quant.tensor import QuantSpec
from .quant.types import BF16, F16, F32, GGMLType, ggml_type, raw_nbytes

ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
_PLAIN_DTYPES = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


class GGUFError(DistorchError, ValueError):
    """A GGUF file that cannot be loaded; ``path`` is the file, ``tensor`` the tensor at fault (or None)."""

    def __init__(self, path: str | os.PathLike, problem: str, tensor: str | None = None) -> None:
        self.path = str(path)
        self.tensor = tensor
        where = f"tensor {tensor!r} of {self.path}" if tensor else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: its GGML type, logical and stored shapes, and its raw bytes (1-D uint8)."""

    name: str
    qtype: GGMLType
    shape: tuple[int, ...]
    stored_shape: tuple[int, ...]
    data: torch.Tensor = field(repr=False, compare=False)

    @property
    def is_quantized(self) -> bool:
        return self.qtype.is_quantized

    @property
    def spec(self) -> QuantSpec:
        """How to dequantize ``data``: the blocks follow ``stored_shape``; view the result as ``shape``."""
        return QuantSpec(self.qtype, self.stored_shape)

    def plain(self) -> torch.Tensor:
        """An F32/F16/BF16 tensor as a typed tensor of its logical shape (a view of the file, no copy)."""
        dtype = _PLAIN_DTYPES.get(self.qtype)
        if dtype is None:
            raise QuantError(f"{self.name} is {self.qtype.name}, not a plain float type", qtype=self.qtype.name)
        return self.data.view(dtype).view(self.shape)


@dataclass
class GGUFFile:
    """The tensors (in file order) and the metadata fields of one GGUF file."""

    path: str
    tensors: dict[str, GGUFTensor]
    metadata: dict[str, Any]

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` ("flux", "t5encoder", "llama"...), or None for files that omit it."""
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def raw_nbytes(self) -> int:
        return sum(t.data.numel() for t in self.tensors.values())

    def type_counts(self) -> dict[str, int]:
        """How many tensors of each GGML type the file holds, e.g. ``{"Q4_K": 120, "F32": 40}``."""
        counts: dict[str, int] = {}
        for tensor in self.tensors.values():
            counts[tensor.qtype.name] = counts.get(tensor.qtype.name, 0) + 1
        return counts


class _CheckedReader(gguf.GGUFReader):
    """gguf's reader, with every tensor's type and byte range checked before gguf builds its arrays, so a
    problem is reported with the tensor's name (gguf itself fails with a bare enum or reshape error)."""

    checked_path = ""

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        for info in fields:
            name, dims, type_id, offset = _tensor_info(info)
            if name is None:  # a header layout this check does not know: leave it to gguf
                break
            try:
                qtype = ggml_type(type_id)
                nbytes = raw_nbytes(tuple(reversed(dims)), qtype)
            except QuantError as error:
                raise GGUFError(self.checked_path, str(error), tensor=name) from None
            end = start_offs + offset + nbytes
            if end > len(self.data):
                raise GGUFError(self.checked_path, f"the file ends at byte {len(self.data)} but this "
                                f"{qtype.name} tensor's data runs to byte {end}: the file is truncated", tensor=name)
        super()._build_tensors(start_offs, fields)


def _tensor_info(info: Any) -> tuple[str | None, list[int], int, int]:
    """(name, dims innermost first, type id, data offset) from gguf's tensor-info field, or (None, ...) if
    its parts are not laid out as gguf 0.10-0.19 lays them out (name length, name, n_dims, dims, type, offset)."""
    try:
        _, name_data, _, dims, raw_type, offset = info.parts
        return str(bytes(name_data), "utf-8"), [int(d) for d in dims], int(raw_type[0]), int(offset[0])
    except (ValueError, TypeError, IndexError, AttributeError):
        return None, [], 0, 0


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse ``path`` and map its tensors (nothing is copied); raises :class:`GGUFError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(path, "no such file")
    if os.path.getsize(path) < 8:
        raise GGUFError(path, f"{os.path.getsize(path)} bytes is too short for a GGUF header")
    reader = _open(path)
    if getattr(reader, "byte_order", "I") != "I":
        raise GGUFError(path, f"the file's byte order differs from this machine's ({sys.byteorder}-endian)")
    metadata = {name: _field_value(f) for name, f in reader.fields.items() if _wanted(name, f)}
    tensors: dict[str, GGUFTensor] = {}
    for entry in reader.tensors:
        tensors[entry.name] = _tensor(path, entry, metadata)
    return GGUFFile(path, tensors, metadata)


def _open(path: str) -> gguf.GGUFReader:
    reader_cls = type("_Reader", (_CheckedReader,), {"checked_path": path})
    try:
        return reader_cls(path, mode="c")
    except GGUFError:
        raise
    except Exception as error:  # gguf raises ValueError/IndexError/KeyError/... for any malformed header
        problem = "not a GGUF file (bad magic number)" if "magic" in str(error).lower() else (
            f"not a readable GGUF file: the header is damaged or cut short ({type(error).__name__}: {error})")
        raise GGUFError(path, problem) from None


def _tensor(path: str, entry: Any, metadata: dict[str, Any]) -> GGUFTensor:
    qtype = ggml_type(int(entry.tensor_type))  # checked by _CheckedReader already
    stored = tuple(int(d) for d in reversed(entry.shape.tolist()))
    shape = stored
    original = metadata.get(ORIG_SHAPE_PREFIX + entry.name)
    if original is not None:
        shape = tuple(int(d) for d in original) if isinstance(original, (list, tuple)) else ()
        if not shape or math.prod(shape) != math.prod(stored):
            raise GGUFError(path, f"its recorded original shape {original} does not hold the {math.prod(stored)} "
                            f"elements of its stored shape {stored}", tensor=entry.name)
    raw = np.asarray(entry.data).reshape(-1).view(np.uint8)
    if raw.size != raw_nbytes(stored, qtype):
        raise GGUFError(path, f"{raw.size} bytes of data where a {qtype.name} tensor of shape {stored} needs "
                        f"{raw_nbytes(stored, qtype)}", tensor=entry.name)
    return GGUFTensor(entry.name, qtype, shape, stored, torch.from_numpy(raw))


def _wanted(name: str, f: Any) -> bool:
    """Scalars and strings, and the original-shape arrays; not gguf's own counters, not the tokenizer's
    vocabulary arrays (hundreds of thousands of strings that nothing here reads)."""
    if name.startswith("GGUF."):
        return False
    is_array = bool(f.types) and f.types[0] == gguf.GGUFValueType.ARRAY
    return not is_array or name.startswith(ORIG_SHAPE_PREFIX)


def _field_value(f: Any) -> Any:
    """A metadata field as a Python value: str, int, float, bool, or a list of them (arrays)."""
    try:
        types = list(f.types)
        if not types:
            return None
        if types[0] == gguf.GGUFValueType.ARRAY:
            if types[-1] == gguf.GGUFValueType.STRING:
                return [str(bytes(f.parts[i]), "utf-8") for i in f.data]
            return [f.parts[i][0].item() for i in f.data]
        if types[0] == gguf.GGUFValueType.STRING:
            return str(bytes(f.parts[f.data[-1]]), "utf-8")
        return f.parts[f.data[-1]][0].item()
    except (IndexError, ValueError, TypeError, UnicodeDecodeError):
        return None


__all__ = ["GGUFError", "GGUFFile", "GGUFTensor", "ORIG_SHAPE_PREFIX", "read_gguf"]
