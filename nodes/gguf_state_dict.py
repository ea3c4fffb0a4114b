"""A GGUF file as the state dict ComfyUI's loaders take: plain tensors as they are, quantized ones as stand-ins.

ComfyUI picks a model's architecture and config from its state dict's keys and shapes before it builds the
model, so a quantized tensor enters as a meta tensor of its logical shape carrying its raw bytes
(nodes/quantized_weights.py); the custom operations take the bytes when the layer loads. The stand-in's nominal
dtype is bfloat16, the dtype the original weights had: ComfyUI sizes its dtype choice from the state dict, and
this makes it choose as for the unquantized model. Plain tensors (F32/F16/BF16) are typed views of the file.

A quantized tensor that is not a layer's ``weight`` or ``bias`` (a bare parameter such as SD3's ``pos_embed``)
has no layer to dequantize it on the fly: it is dequantized once here, in float32 (files keep such tensors plain).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from ..distorch.gguf_file import GGUFError, GGUFFile, GGUFTensor
from ..distorch.gguf_names import (DIFFUSION_ARCHITECTURES, PERMUTED_QK_ARCHITECTURES, TEXT_ARCHITECTURES, UNUSED,
                                   permuted_heads, text_encoder_keys, unpermute_rows)
from ..distorch.quant import dequantize
from .quantized_weights import QuantizedSource, stand_in

log = logging.getLogger("distorch")
NOMINAL_DTYPE = torch.bfloat16
# Text encoders whose tokenizer ComfyUI takes from the state dict (ComfyUI-GGUF rebuilds it from the GGUF's
# vocabulary with sentencepiece or transformers); token-embedding shape -> what the file is.
TOKENIZER_IN_STATE_DICT = {(256384, 4096): "a UMT5-XXL encoder (its sentencepiece tokenizer)",
                           (131072, 5120): "a Mistral encoder (its tekken tokenizer)"}


@dataclass
class GGUFStateDict:
    """The state dict, and the sources of its stand-ins (each says whether a layer took it)."""

    path: str
    architecture: str | None
    state_dict: dict[str, torch.Tensor]
    sources: list[QuantizedSource] = field(default_factory=list)

    def unused(self) -> list[QuantizedSource]:
        return [s for s in self.sources if not s.consumed]


def diffusion_state_dict(f: GGUFFile) -> GGUFStateDict:
    """A diffusion-model GGUF (ComfyUI-GGUF's converter keeps the checkpoint's own keys)."""
    arch = f.architecture
    if arch in TEXT_ARCHITECTURES:
        raise GGUFError(f.path, f"its architecture {arch!r} is a text encoder, not a diffusion model: load it "
                        "with a DisTorch CLIP loader (GGUF)")
    if arch is not None and arch not in DIFFUSION_ARCHITECTURES:
        raise GGUFError(f.path, f"architecture {arch!r} is not a diffusion model this loader reads "
                        f"({', '.join(sorted(DIFFUSION_ARCHITECTURES))})")
    out = GGUFStateDict(f.path, arch, {})
    for name, tensor in f.tensors.items():
        out.state_dict[name] = _entry(out, tensor, name)
    return out


def text_encoder_state_dict(f: GGUFFile) -> GGUFStateDict:
    """A llama.cpp text-encoder GGUF, renamed to ComfyUI's keys (and LLaMA Q/K rows put back in order)."""
    arch = f.architecture
    if arch in DIFFUSION_ARCHITECTURES:
        raise GGUFError(f.path, f"its architecture {arch!r} is a diffusion model, not a text encoder: load it "
                        "with the DisTorch diffusion-model loader (GGUF)")
    if arch not in TEXT_ARCHITECTURES:
        raise GGUFError(f.path, f"architecture {arch!r} is not a text encoder this loader reads "
                        f"({', '.join(sorted(TEXT_ARCHITECTURES))})")
    embedding = f.tensors.get("token_embd.weight")
    needs = TOKENIZER_IN_STATE_DICT.get(tuple(embedding.shape)) if embedding is not None else None
    if needs:
        raise GGUFError(f.path, f"this is {needs}, which ComfyUI needs in the state dict and DisTorch does not "
                        "rebuild from GGUF metadata; use the safetensors file with a DisTorch CLIP loader",
                        tensor="token_embd.weight")
    keys = text_encoder_keys(arch, list(f.tensors))
    unknown = [name for name, key in keys.items() if key is None]
    if unknown:
        log.warning("[DisTorch] %s: %d tensors with names unknown for %s kept as they are: %s", f.path, len(unknown),
                    arch, unknown[:8])
    out = GGUFStateDict(f.path, arch, {})
    for name, tensor in f.tensors.items():
        key = keys[name] or name
        if key == UNUSED:
            continue
        if arch in PERMUTED_QK_ARCHITECTURES and permuted_heads(name):
            tensor = _unpermuted(f, tensor, permuted_heads(name))
        out.state_dict[key] = _entry(out, tensor, key)
    return out


def _entry(out: GGUFStateDict, tensor: GGUFTensor, key: str) -> torch.Tensor:
    if not tensor.is_quantized:
        return tensor.plain()
    source = QuantizedSource(tensor.data, tensor.spec, tensor.shape, tensor.name, out.path)
    if not key.endswith((".weight", ".bias")):
        log.info("[DisTorch] %s (%s): not a layer's weight, dequantized once at load", source.origin,
                 tensor.qtype.name)
        return dequantize(tensor.data, tensor.spec).view(tensor.shape)
    out.sources.append(source)
    return stand_in(source, NOMINAL_DTYPE)


def _unpermuted(f: GGUFFile, tensor: GGUFTensor, which: str) -> GGUFTensor:
    arch = f.architecture
    heads = f.metadata.get(f"{arch}.attention.head_count")
    kv_heads = f.metadata.get(f"{arch}.attention.head_count_kv", heads)
    count = heads if which == "q" else kv_heads
    if not isinstance(count, int) or count <= 0:
        raise GGUFError(f.path, f"{arch}.attention.head_count{'' if which == 'q' else '_kv'} is missing, so the "
                        "rotary row order llama.cpp gives Q/K projections cannot be undone", tensor=tensor.name)
    try:
        data = unpermute_rows(tensor.data, tensor.stored_shape[0], count)
    except ValueError as error:
        raise GGUFError(f.path, str(error), tensor=tensor.name) from None
    return dataclasses.replace(tensor, data=data)

