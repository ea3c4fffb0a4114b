"""Reading a .safetensors file's header without its tensor data, and the file format's dtype names.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape,
``data_offsets``; an optional ``__metadata__`` object of strings), then the raw tensor bytes. Only the header
is read, so a 24 GB model is described in milliseconds and without RAM.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Iterable, Union

import torch

from .errors import DistorchError

PathLike = Union[str, "os.PathLike[str]"]

MAX_HEADER_BYTES = 100 * 1000 * 1000  # the safetensors library's own limit; a bigger one is corruption
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
# Floating dtypes: the ones ComfyUI converts to the model's load dtype (integer tensors keep theirs).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0"})
# How ComfyUI's menus name them (a loader's weight_dtype, the console), for messages and the web view.
DTYPE_LABELS = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8_e4m3fn",
                "F8_E5M2": "fp8_e5m2", "F8_E8M0": "fp8_e8m0fnu"}
# getattr: an older torch in a user's ComfyUI may lack the newest dtypes; those names then have no torch dtype.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, attr in {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}.items() if hasattr(torch, attr)}
_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


class HeaderError(DistorchError, ValueError):
    """A .safetensors header that is missing, truncated or malformed; the message names file and problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{os.fspath(path)}: not a valid safetensors file: {problem}")


def dtype_name(dtype: torch.dtype) -> str | None:
    """The safetensors name of a torch dtype (``torch.float32`` -> ``"F32"``); None for one the format lacks."""
    return _NAMES.get(dtype)


def read_header(path: PathLike) -> dict[str, dict[str, Any]]:
    """The tensor entries of ``path``'s header (``__metadata__`` dropped), each checked for sane offsets."""
    header, data_bytes = _read_json(path)
    return {name: _checked_entry(path, name, entry, data_bytes) for name, entry in header.items()
            if name != "__metadata__"}


def read_metadata(path: PathLike) -> dict[str, str]:
    """The header's ``__metadata__`` (string keys and values), empty when there is none."""
    metadata = _read_json(path)[0].get("__metadata__")
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}


def _read_json(path: PathLike) -> tuple[dict[str, Any], int]:
    """The header as a JSON object and the size of the data section after it."""
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        raw_length = file.read(8)
        if len(raw_length) < 8:
            raise HeaderError(path, f"file is {file_size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", raw_length)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(path, f"header length {length} exceeds {MAX_HEADER_BYTES} bytes")
        if length > file_size - 8:
            raise HeaderError(path, f"truncated: header says {length} bytes but only {file_size - 8} follow")
        text = file.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise HeaderError(path, f"header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise HeaderError(path, f"header is a JSON {type(header).__name__}, not an object")
    return header, file_size - 8 - length


def _checked_entry(path: PathLike, name: str, entry: Any, data_bytes: int) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise HeaderError(path, f"entry {name!r} is not an object")
    offsets, shape = entry.get("data_offsets"), entry.get("shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        raise HeaderError(path, f"entry {name!r} has bad data_offsets {offsets!r}")
    if not (isinstance(shape, list) and all(_is_count(x) for x in shape)):
        raise HeaderError(path, f"entry {name!r} has bad shape {shape!r}")
    begin, end = offsets
    if begin > end:
        raise HeaderError(path, f"entry {name!r} has data_offsets {offsets} that run backwards")
    if end > data_bytes:
        raise HeaderError(path, f"truncated: entry {name!r} ends at byte {end} of a {data_bytes}-byte data section")
    element = DTYPE_BYTES.get(entry.get("dtype"))
    if element is not None and math.prod(shape) * element != end - begin:
        raise HeaderError(path, f"entry {name!r}: {entry.get('dtype')} {shape} needs "
                                f"{math.prod(shape) * element} bytes, data_offsets give {end - begin}")
    return entry


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def entry_bytes(entry: dict[str, Any]) -> int:
    """Bytes of one (checked) header entry in the file."""
    begin, end = entry["data_offsets"]
    return end - begin


def tensor_bytes(paths: Iterable[PathLike]) -> int:
    """Sum of every tensor's bytes in the files' headers."""
    return sum(entry_bytes(e) for p in paths for e in read_header(p).values())
