"""One quantized weight: what it is (:class:`QuantSpec`) and how to turn its raw bytes into a tensor.

A quantized weight lives in the engine as its raw GGUF bytes, exactly as stored (a 1-D uint8 tensor: in
the pinned arena, in a staging slot, or resident on the compute device). :func:`dequantize` turns those
bytes into the logical weight on the bytes' device, just before the layer uses it, preferably into a
caller-owned buffer (see :class:`distorch.quant.scratch.ScratchPool`) so nothing is allocated per call.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..errors import QuantError
from . import types as T
from .dequant_torch import dequantize_torch, raw_blocks
from .types import GGMLType, QTypeLike, ggml_type, raw_nbytes

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton"]

# Plain types need no arithmetic: one copy_ with a cast, no temporaries (f16 -> bf16 goes through float32
# inside copy_, which is exact, so it equals float32-then-cast too).
_PLAIN_DTYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}
# What dequant_triton.KERNELS and OUT_DTYPES cover, restated here so choosing needs no triton import
# (a test checks the two agree).
_TRITON_TYPES = frozenset({T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.IQ4_NL,
                           T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS})
_TRITON_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class QuantSpec:
    """A GGML-typed weight: its type, its logical shape (as the model sees it, e.g. ``(out, in)`` for a
    linear weight) and the size of its raw bytes, which is derived and checked on construction."""

    qtype: GGMLType
    shape: tuple[int, ...]
    nbytes: int = field(init=False)

    def __init__(self, qtype: QTypeLike, shape: tuple[int, ...] | list[int] | torch.Size) -> None:
        entry = ggml_type(qtype)
        dims = tuple(int(d) for d in shape)
        object.__setattr__(self, "qtype", entry)
        object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "nbytes", raw_nbytes(dims, entry))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_triton_checked: bool | None = None


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: a CUDA device and an importable ``triton``
    (imported on the first call only; a failure is logged once and the torch path is used)."""
    global _triton_checked
    if device.type != "cuda":
        return False
    if _triton_checked is None:
        try:
            from . import dequant_triton  # noqa: F401  (imports triton)
            _triton_checked = True
        except Exception as error:  # not installed, or broken: the torch path still works
            log.warning("Triton dequantization kernels unavailable (%s: %s); using the torch path",
                        type(error).__name__, error)
            _triton_checked = False
    return _triton_checked


def has_triton_kernel(qtype: QTypeLike) -> bool:
    """Whether ``qtype`` has a Triton kernel (without importing triton)."""
    return ggml_type(qtype) in _TRITON_TYPES



def choose_backend(raw: torch.Tensor, spec: QuantSpec, out_dtype: torch.dtype, backend: Backend = "auto") -> str:
    """``"triton"`` or ``"torch"``: Triton on CUDA for the types and output dtypes it has kernels for."""
    fits = spec.qtype in _TRITON_TYPES and out_dtype in _TRITON_OUT_DTYPES
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not fits or not triton_usable(raw.device):
            raise QuantError(f"no Triton kernel for {spec.qtype.name} to {out_dtype} on {raw.device}",
                             qtype=spec.qtype.name)
        return "triton"
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', not {backend!r}")
    return "triton" if fits and triton_usable(raw.device) else "torch"


def dequantize(raw: torch.Tensor, spec: QuantSpec, out_dtype: torch.dtype | None = None,
               out: torch.Tensor | None = None, backend: Backend = "auto") -> torch.Tensor:
    """The weight ``spec`` describes, from its raw GGUF bytes ``raw`` (1-D uint8, ``spec.nbytes`` long),
    on ``raw``'s device, shaped ``spec.shape``.

    ``out_dtype`` defaults to ``out``'s dtype, else float32. With ``out`` (a contiguous tensor on
    ``raw``'s device, of ``out_dtype``, at least ``spec.numel`` elements) the values are written into its
    first ``spec.numel`` elements and a view of them is returned: nothing is allocated on the Triton path
    and for plain types. Work is enqueued on the current stream; nothing synchronises with the host.
    Values equal ``gguf.quants.dequantize`` computed in float32 then cast to ``out_dtype``.
    """
    if out_dtype is None:
        out_dtype = torch.float32 if out is None else out.dtype
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != spec.nbytes:
        raise QuantError(f"{spec.qtype.name} weight of shape {spec.shape} needs {spec.nbytes} raw bytes as a 1-D "
                         f"uint8 tensor, got {raw.dtype} of shape {tuple(raw.shape)}", qtype=spec.qtype.name)
    if out is None:
        out = torch.empty(spec.numel, dtype=out_dtype, device=raw.device)
    else:
        _check_out(out, raw, spec, out_dtype)
    flat = out.view(-1)[: spec.numel]
    if spec.numel == 0:
        return flat.view(spec.shape)
    plain = _PLAIN_DTYPES.get(spec.qtype)
    if plain is not None:
        flat.copy_(raw_blocks(raw, spec.qtype).view(plain).view(-1))
    elif choose_backend(raw, spec, out_dtype, backend) == "triton":
        from .dequant_triton import dequantize_into

        with torch.cuda.device(raw.device):  # Triton launches on the current device's current stream
            dequantize_into(raw.contiguous(), spec.qtype, flat)
    else:
        flat.copy_(dequantize_torch(raw, spec.qtype))
    return flat.view(spec.shape)


def _check_out(out: torch.Tensor, raw: torch.Tensor, spec: QuantSpec, out_dtype: torch.dtype) -> None:
    problems = []
    if out.dtype != out_dtype:
        problems.append(f"dtype {out.dtype} is not {out_dtype}")
    if out.device != raw.device:
        problems.append(f"device {out.device} is not the raw bytes' {raw.device}")
    if not out.is_contiguous():
        problems.append("it is not contiguous")
    if out.numel() < spec.numel:
        problems.append(f"it holds {out.numel()} elements, fewer than {spec.numel}")
    if problems:
        raise QuantError(f"out buffer for a {spec.qtype.name} weight of shape {spec.shape}: " + "; ".join(problems),
                         qtype=spec.qtype.name)
