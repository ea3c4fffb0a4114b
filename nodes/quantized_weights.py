"""Quantized weights inside a ComfyUI model: uint8 Parameters of raw GGML bytes that carry their QuantSpec.

The engine streams any tensor as bytes, and the streamer rebinds ``param.data`` to staging views and back, so
attributes set on the Parameter object (``quant_spec``, ``quant_shape``, ``quant_patches``) stay with it wherever
its bytes are: in the file mapping, the pinned arena, a staging slot or resident on the compute device.

Weight patches (LoRA and the rest) on a quantized weight are not merged into its bytes, which would mean
requantizing: the streaming patcher attaches the patch list to the Parameter, moved to the compute device once,
and the layer applies it with ComfyUI's ``calculate_weight`` after dequantizing, in every forward
(nodes/gguf_ops.py). A new LoRA strength swaps the attached list and nothing else: no bytes are rewritten.

Before the model exists, a quantized tensor travels through ComfyUI's loaders as a *stand-in*: a meta tensor of
its logical shape (ComfyUI's model detection reads ``sd[key].shape``) carrying a :class:`QuantizedSource`.
Nothing here imports ComfyUI.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from ..distorch.quant import QuantSpec

SOURCE_ATTR = "quantized_source"  # on a stand-in
SPEC_ATTR, SHAPE_ATTR, PATCHES_ATTR = "quant_spec", "quant_shape", "quant_patches"  # on a Parameter


@dataclass
class QuantizedSource:
    """What a stand-in stands for: raw bytes (1-D uint8), how to dequantize them, the logical shape, and where
    they come from (file and tensor name, for messages). ``consumed`` is set by the layer that took them."""

    raw: torch.Tensor
    spec: QuantSpec
    shape: tuple[int, ...]
    name: str
    path: str
    consumed: bool = False

    @property
    def origin(self) -> str:
        return f"tensor {self.name!r} of {self.path}"


def stand_in(source: QuantizedSource, dtype: torch.dtype) -> torch.Tensor:
    """A meta tensor of ``source``'s logical shape and the nominal ``dtype``, carrying ``source``."""
    tensor = torch.empty(source.shape, dtype=dtype, device="meta")
    setattr(tensor, SOURCE_ATTR, source)
    return tensor


def source_of(value: Any) -> QuantizedSource | None:
    """The source a stand-in carries, or None for anything else."""
    return getattr(value, SOURCE_ATTR, None) if isinstance(value, torch.Tensor) else None


def quantized_parameter(source: QuantizedSource) -> torch.nn.Parameter:
    """A uint8 Parameter holding ``source``'s bytes (no copy) and carrying its spec and logical shape."""
    param = torch.nn.Parameter(source.raw, requires_grad=False)
    setattr(param, SPEC_ATTR, source.spec)
    setattr(param, SHAPE_ATTR, tuple(source.shape))
    return param


def quant_spec(tensor: Any) -> QuantSpec | None:
    """The QuantSpec of a quantized Parameter, None for a plain tensor (or None)."""
    return getattr(tensor, SPEC_ATTR, None)


def logical_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    return getattr(param, SHAPE_ATTR)


def attached_patches(param: torch.nn.Parameter) -> tuple[str, list] | None:
    """``(key, patch list)`` attached to a quantized Parameter, or None."""
    return getattr(param, PATCHES_ATTR, None)


# --- the streaming patcher's hook ---------------------------------------------------------------------------
def _quantized_at(model: torch.nn.Module, key: str) -> torch.nn.Parameter | None:
    try:
        param = model.get_parameter(key)
    except AttributeError:  # a buffer, or not in this model
        return None
    return param if quant_spec(param) is not None else None


def attach_patches(model: torch.nn.Module, key: str, patches: list, device: torch.device) -> bool:
    """Attach ``patches`` (ComfyUI's patch list for ``key``) to the quantized weight at ``key``, with their
    tensors on ``device``; False (nothing done) when that weight is not quantized."""
    param = _quantized_at(model, key)
    if param is None:
        return False
    setattr(param, PATCHES_ATTR, (key, patches_on(list(patches), device)))
    return True


def detach_patches(model: torch.nn.Module, key: str) -> None:
    """Drop the patches attached to the quantized weight at ``key`` (no-op otherwise)."""
    param = _quantized_at(model, key)
    if param is not None and hasattr(param, PATCHES_ATTR):
        delattr(param, PATCHES_ATTR)


def detach_all_patches(model: torch.nn.Module) -> None:
    for param in model.parameters():
        if hasattr(param, PATCHES_ATTR):
            delattr(param, PATCHES_ATTR)


def patches_on(item: Any, device: torch.device) -> Any:
    """A patch list with its tensors on ``device``: tensors, tuples and lists are rebuilt; ComfyUI's weight
    adapters (LoRA, LoHa, ...; they keep their tensors in ``weights``) are shallow-copied with moved weights;
    anything else (strengths, offsets, functions) is kept as is. Nothing ComfyUI holds is modified."""
    if isinstance(item, torch.Tensor):
        return item.to(device)
    if isinstance(item, tuple):
        return tuple(patches_on(x, device) for x in item)
    if isinstance(item, list):
        return [patches_on(x, device) for x in item]
    weights = getattr(item, "weights", None)
    if isinstance(weights, (tuple, list)):
        moved = copy.copy(item)
        moved.weights = patches_on(weights, device)
        return moved
    return item
