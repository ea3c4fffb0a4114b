"""Which GGUF files hold which kind of model, and the tensor names of llama.cpp text encoders in ComfyUI's terms.

Diffusion-model GGUFs (ComfyUI-GGUF's converter) keep the original checkpoint's keys, so ComfyUI's own model
detection reads them as they are. Text-encoder GGUFs come from llama.cpp's converter, which renames every tensor
(``enc.blk.3.attn_q.weight``); ComfyUI's T5 and LLM encoders use the Hugging Face names
(``encoder.block.3.layer.0.SelfAttention.q.weight``, ``model.layers.3.self_attn.q_proj.weight``), so those are
mapped back here. llama.cpp also reorders the rows of LLaMA-architecture Q and K projections for its rotary
layout; :func:`unpermute_rows` undoes that on the raw bytes (GGML blocks never cross a row, so rows move whole).
"""
from __future__ import annotations

import re

import torch

# general.architecture of the diffusion models and text encoders ComfyUI-GGUF loads.
DIFFUSION_ARCHITECTURES = frozenset({"flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid",
                                     "wan", "lumina2", "qwen_image"})
T5_ARCHITECTURES = frozenset({"t5", "t5encoder"})
LLM_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen2vl", "qwen3", "qwen3vl"})
TEXT_ARCHITECTURES = T5_ARCHITECTURES | LLM_ARCHITECTURES
# Architectures whose Q/K rows llama.cpp's converter permutes (its LlamaModel.permute).
PERMUTED_QK_ARCHITECTURES = frozenset({"llama"})

_BLOCK = re.compile(r"^(?P<stack>enc\.|dec\.|)blk\.(?P<index>\d+)\.(?P<part>[a-z0-9_]+)\.(?P<kind>weight|bias)$")

_T5_PARTS = {
    "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o", "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "attn_norm": "layer.0.layer_norm", "ffn_gate": "layer.1.DenseReluDense.wi_0",
    "ffn_down": "layer.1.DenseReluDense.wo", "ffn_norm": "layer.1.layer_norm",
    # ffn_up: wi_1 in gated (T5 v1.1, T5-XXL) blocks, wi in the original ReLU T5 (T5-base): see t5_key
}
_T5_GLOBAL = {"token_embd.weight": "shared.weight", "enc.output_norm.weight": "encoder.final_layer_norm.weight"}

_LLM_PARTS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LLM_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}

UNUSED = ""  # what a key function returns for a tensor ComfyUI's encoder has no place for


def t5_key(name: str, gated: bool) -> str | None:
    """ComfyUI's key for llama.cpp T5 tensor ``name``; ``UNUSED`` for the decoder and LM head of a full T5
    (ComfyUI builds the encoder only); None for a name this map does not know. ``gated``: the file's FFN blocks
    have ``ffn_gate`` (T5 v1.1, T5-XXL) rather than one ReLU projection (the original T5, T5-base)."""
    if name in _T5_GLOBAL:
        return _T5_GLOBAL[name]
    if name.startswith("dec.") or name == "output.weight":  # a full T5's decoder and LM head
        return UNUSED
    match = _BLOCK.match(name)
    if match is None or match["stack"] != "enc.":
        return None
    part = match["part"]
    target = ("layer.1.DenseReluDense.wi_1" if gated else "layer.1.DenseReluDense.wi") if part == "ffn_up" \
        else _T5_PARTS.get(part)
    return None if target is None else f"encoder.block.{match['index']}.{target}.{match['kind']}"


def llm_key(name: str) -> str | None:
    """ComfyUI's key for llama.cpp LLaMA/Qwen tensor ``name`` (``model.layers.N...``), or None if unknown."""
    if name in _LLM_GLOBAL:
        return _LLM_GLOBAL[name]
    match = _BLOCK.match(name)
    if match is None or match["stack"]:
        return None
    target = _LLM_PARTS.get(match["part"])
    return None if target is None else f"model.layers.{match['index']}.{target}.{match['kind']}"


def text_encoder_keys(architecture: str, names: list[str]) -> dict[str, str | None]:
    """``{gguf name: ComfyUI key, UNUSED, or None (unknown)}`` for every tensor of a text-encoder file."""
    if architecture in T5_ARCHITECTURES:
        gated = any(_BLOCK.match(n) and _BLOCK.match(n)["part"] == "ffn_gate" for n in names)
        return {n: t5_key(n, gated) for n in names}
    if architecture in LLM_ARCHITECTURES:
        return {n: llm_key(n) for n in names}
    raise ValueError(f"{architecture!r} is not a text-encoder architecture ({sorted(TEXT_ARCHITECTURES)})")


def permuted_heads(name: str) -> str | None:
    """"q" or "k" for the LLaMA Q/K projections llama.cpp permutes (weights and biases), else None."""
    match = _BLOCK.match(name)
    if match is None or match["stack"]:
        return None
    return {"attn_q": "q", "attn_k": "k"}.get(match["part"])


def unpermute_rows(raw: torch.Tensor, rows: int, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order on raw bytes. Hugging Face (and ComfyUI) keep each head's rotary
    dimensions as two halves; llama.cpp's RoPE rotates adjacent pairs, so its converter interleaves the halves
    (row ``i`` of the second half lands right after row ``i`` of the first). ``raw`` is the tensor's bytes
    (1-D uint8) holding ``rows`` rows of equal size; returns a new contiguous tensor in Hugging Face order."""
    if rows % (2 * heads) or raw.numel() % rows:
        raise ValueError(f"{rows} rows of {raw.numel()} bytes cannot be split into {heads} heads of rotary pairs")
    by_row = raw.view(rows, raw.numel() // rows)
    per_head = by_row.view(heads, rows // heads // 2, 2, by_row.shape[1])  # (head, pair, half, bytes)
    return per_head.transpose(1, 2).reshape(-1).contiguous()


__all__ = ["DIFFUSION_ARCHITECTURES", "LLM_ARCHITECTURES", "PERMUTED_QK_ARCHITECTURES", "T5_ARCHITECTURES",
           "TEXT_ARCHITECTURES", "UNUSED", "llm_key", "permuted_heads", "t5_key", "text_encoder_keys",
           "unpermute_rows"]
