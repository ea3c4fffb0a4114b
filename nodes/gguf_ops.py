"""Custom operations for models whose weights are raw GGML bytes (ComfyUI's ``model_options["custom_operations"]``).

ComfyUI builds every layer of a model through an operations class (``operations.Linear(...)``). The class made by
:func:`gguf_operations` is ComfyUI's own ``manual_cast`` (plain weights are cast to the input's dtype in every
forward, as for any weight stored in another dtype) with Linear, Conv1d/2d/3d and Embedding able to hold
quantized weights:

- Loading: a quantized stand-in (nodes/quantized_weights.py) becomes a uint8 Parameter of the raw bytes; plain
  tensors are assigned as they come (Linear and Embedding allocate nothing when ComfyUI builds them, so a 12 GB
  model is never allocated twice). Shapes are checked as torch checks them.
- Forward: the weight is dequantized on the input's device, in the input's dtype (the compute dtype ComfyUI
  picked), into the model's :class:`~distorch.quant.ScratchPool` -- one reusable buffer per (device, dtype, slot),
  so nothing is allocated per layer once the largest weight has been seen. Patches attached by the streaming
  patcher are applied after dequantization with ComfyUI's ``calculate_weight``: dequantized in float32, patched
  in float32 as ComfyUI patches any weight, then written into the compute-dtype buffer. Resident and streamed
  layers run this same code on the same bytes, so they give the same bits.
- An Embedding dequantizes only the rows its input selects (GGML blocks never cross a row), so a 150k-token
  vocabulary costs a few rows per prompt, not the whole table.
- Norms and transposed convolutions dequantize a quantized weight once, at load (real files keep them plain).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

import comfy.lora
import comfy.ops

from ..distorch.quant import QuantSpec, ScratchPool, dequantize
from .quantized_weights import attached_patches, logical_shape, quant_spec, quantized_parameter, source_of

log = logging.getLogger("distorch")

WEIGHT_SLOT, BIAS_SLOT = 0, 1
PATCH_SLOT_OFFSET = 2  # float32 buffers that patches are applied in: slots 2 and 3


class QuantizedLayer:
    """Mixin (first in the MRO) for layers whose weight and bias may be quantized."""

    scratch: ScratchPool  # set on the per-model subclasses gguf_operations() makes

    # --- shapes (what a file's tensor must match) ---------------------------------------------------------
    def expected_shape(self, name: str) -> tuple[int, ...] | None:
        raise NotImplementedError

    def construction_dtype(self) -> torch.dtype:
        return getattr(self, "built_dtype", None) or torch.float32

    # --- loading ------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        entries = {name: state_dict.get(prefix + name) for name in ("weight", "bias")}
        if self.weight is not None and not any(source_of(v) for v in entries.values()):
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        for name, value in entries.items():
            if value is not None:
                self._take(prefix + name, name, value, unexpected_keys, error_msgs)
        if self.weight is None:  # as ComfyUI's lazy loaders do: a missing weight is reported and zero
            shape = self.expected_shape("weight")
            self.weight = torch.nn.Parameter(torch.zeros(shape, dtype=self.construction_dtype()), requires_grad=False)
            missing_keys.append(prefix + "weight")
        for key in state_dict:
            rest = key[len(prefix):] if key.startswith(prefix) else None
            if rest is not None and "." not in rest and rest not in entries:
                unexpected_keys.append(key)

    def _take(self, key: str, name: str, value: torch.Tensor, unexpected_keys: list, error_msgs: list) -> None:
        expected = self.expected_shape(name)
        if expected is None:  # a bias for a layer built without one
            unexpected_keys.append(key)
            return
        source = source_of(value)
        shape = tuple(source.shape) if source else tuple(value.shape)
        if shape != tuple(expected):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {torch.Size(shape)} from "
                              f"checkpoint, the shape in current model is {torch.Size(expected)}.")
            return
        if source is not None:
            setattr(self, name, quantized_parameter(source))
            source.consumed = True
        else:
            setattr(self, name, torch.nn.Parameter(value, requires_grad=False))

    # --- forward ------------------------------------------------------------------------------------------
    def holds_quantized(self) -> bool:
        return quant_spec(self.weight) is not None or quant_spec(self.bias) is not None

    def cast_weights(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) on ``device`` in ``dtype``, with ComfyUI's weight/bias functions applied."""
        weight = self.resolved(self.weight, dtype, device, WEIGHT_SLOT)
        bias = None if self.bias is None else self.resolved(self.bias, dtype, device, BIAS_SLOT)
        for function in self.weight_function:
            weight = function(weight)
        for function in self.bias_function:
            bias = function(bias)
        return weight, bias

    def resolved(self, param: torch.nn.Parameter, dtype: torch.dtype, device: torch.device, slot: int) -> torch.Tensor:
        """A plain parameter cast, or a quantized one dequantized (and patched) into the scratch pool."""
        spec = quant_spec(param)
        if spec is None:
            return param.to(device=device, dtype=dtype)
        raw = param.data if param.device == device else param.data.to(device, non_blocking=True)
        shape = logical_shape(param)
        patches = attached_patches(param)
        if patches is None:
            return self.scratch.dequantize(raw, spec, dtype, slot).view(shape)
        key, patch_list = patches
        base = self.scratch.dequantize(raw, spec, torch.float32, slot + PATCH_SLOT_OFFSET).view(shape)
        patched = comfy.lora.calculate_weight(patch_list, base, key)
        out = self.scratch.buffer(spec.numel, dtype, device, slot).view(shape)
        out.copy_(patched)
        return out


class Linear(QuantizedLayer, comfy.ops.manual_cast.Linear):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        torch.nn.Module.__init__(self)  # no weight allocated: the file's tensors are assigned at load
        self.in_features, self.out_features = in_features, out_features
        self.with_bias, self.built_dtype = bias, dtype
        self.weight = None
        self.bias = None

    def expected_shape(self, name):
        if name == "weight":
            return (self.out_features, self.in_features)
        return (self.out_features,) if self.with_bias else None

    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        if not self.holds_quantized():
            return super().forward_comfy_cast_weights(input, *args, **kwargs)
        weight, bias = self.cast_weights(input.dtype, input.device)
        return F.linear(input, weight, bias)


class _Conv(QuantizedLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built_dtype = self.weight.dtype

    def expected_shape(self, name):
        if name == "weight":
            return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return (self.out_channels,) if self.bias is not None else None

    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        if not self.holds_quantized():
            return super().forward_comfy_cast_weights(input, *args, **kwargs)
        weight, bias = self.cast_weights(input.dtype, input.device)
        return self._conv_forward(input, weight, bias, *args, **kwargs)


class Conv1d(_Conv, comfy.ops.manual_cast.Conv1d):
    pass


class Conv2d(_Conv, comfy.ops.manual_cast.Conv2d):
    pass


class Conv3d(_Conv, comfy.ops.manual_cast.Conv3d):
    pass


class Embedding(QuantizedLayer, comfy.ops.manual_cast.Embedding):
    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None):
        torch.nn.Module.__init__(self)  # no table allocated: the file's tensor is assigned at load
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self.built_dtype = dtype
        self.weight = None
        self.bias = None

    def expected_shape(self, name):
        return (self.num_embeddings, self.embedding_dim) if name == "weight" else None

    def forward_comfy_cast_weights(self, input, out_dtype=None):
        if not self.holds_quantized():
            return super().forward_comfy_cast_weights(input, out_dtype=out_dtype)
        dtype = out_dtype or self.construction_dtype()
        spec = quant_spec(self.weight)
        whole_rows = spec.shape == logical_shape(self.weight)
        if self.max_norm is None and attached_patches(self.weight) is None and whole_rows:
            return self._rows(input, spec, dtype).to(dtype=out_dtype)
        weight, _ = self.cast_weights(dtype, input.device)
        return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse).to(dtype=out_dtype)

    def _rows(self, ids: torch.Tensor, spec: QuantSpec, dtype: torch.dtype) -> torch.Tensor:
        """The rows ``ids`` selects, dequantized on their own: a fresh tensor (it is the output, so it must
        not live in the scratch buffer the next layer overwrites)."""
        raw = self.weight.data if self.weight.device == ids.device else self.weight.data.to(ids.device)
        table = raw.view(self.num_embeddings, -1)
        picked = table.index_select(0, ids.reshape(-1)).reshape(-1)
        rows = dequantize(picked, QuantSpec(spec.qtype, (ids.numel(), self.embedding_dim)), dtype)
        return rows.view(*ids.shape, self.embedding_dim)


class DequantizedAtLoad:
    """Mixin for layers that never dequantize on the fly (norms, transposed convolutions): a quantized weight
    is dequantized once, in float32 on the CPU, and loaded the normal way."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias"):
            source = source_of(state_dict.get(prefix + name))
            if source is not None:
                log.info("[DisTorch] %s: dequantized once at load (a %s layer dequantizes nothing per forward)",
                         source.origin, type(self).__name__)
                state_dict[prefix + name] = dequantize(source.raw, source.spec).view(source.shape)
                source.consumed = True
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


QUANTIZED_LAYERS = {"Linear": Linear, "Conv1d": Conv1d, "Conv2d": Conv2d, "Conv3d": Conv3d, "Embedding": Embedding}
PLAIN_LAYERS = ("LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm2d", "ConvTranspose1d", "ConvTranspose2d")


def gguf_operations(scratch: ScratchPool) -> type:
    """An operations class for one model, whose layers dequantize into ``scratch``."""
    base = comfy.ops.manual_cast
    layers: dict[str, Any] = {name: type(name, (cls,), {"scratch": scratch}) for name, cls in QUANTIZED_LAYERS.items()}
    for name in PLAIN_LAYERS:
        if hasattr(base, name):  # BatchNorm2d is newer than some hosts
            layers[name] = type(name, (DequantizedAtLoad, getattr(base, name)), {})
    return type("GGUFOperations", (base,), layers)


def largest_quantized_numel(model: torch.nn.Module) -> int:
    """Elements of the largest quantized weight: what one scratch buffer grows to."""
    return max((s.numel for s in (quant_spec(p) for p in model.parameters()) if s is not None), default=0)
