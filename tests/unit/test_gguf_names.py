"""distorch.gguf_names: llama.cpp text-encoder names back to ComfyUI's, checked against gguf's own converter map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, get_tensor_name_map
from gguf import quants as gguf_quants

from distorch.gguf_names import UNUSED, llm_key, permuted_heads, t5_key, text_encoder_keys, unpermute_rows


def t5_keys(blocks: int, gated: bool) -> list[str]:
    """Every key of a Hugging Face T5 encoder (ComfyUI's comfy/text_encoders/t5.py uses the same names)."""
    ffn = ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]
    keys = ["shared.weight", "encoder.final_layer_norm.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    for i in range(blocks):
        keys += [f"encoder.block.{i}.layer.0.SelfAttention.{p}.weight" for p in "qkvo"]
        keys += [f"encoder.block.{i}.layer.0.layer_norm.weight", f"encoder.block.{i}.layer.1.layer_norm.weight"]
        keys += [f"encoder.block.{i}.layer.1.DenseReluDense.{p}.weight" for p in ffn]
    return keys


def llm_keys(blocks: int, qk_norm: bool, qkv_bias: bool) -> list[str]:
    """Every key of a Hugging Face LLaMA / Qwen decoder as ComfyUI's text encoders name them."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(blocks):
        p = f"model.layers.{i}."
        keys += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        keys += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        keys += [p + f"self_attn.{x}_proj.bias" for x in "qkv"] if qkv_bias else []
        keys += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"] if qk_norm else []
    return keys


def converted(keys: list[str], arch: MODEL_ARCH, blocks: int) -> dict[str, str]:
    """llama.cpp's name for each key, by the converter's tensor map in the gguf package."""
    name_map = get_tensor_name_map(arch, blocks)
    return {name_map.get_name(k, try_suffixes=(".weight", ".bias")): k for k in keys}


@pytest.mark.parametrize("gated", [True, False], ids=["t5_v1_1_gated", "t5_original_relu"])
def test_t5_names_map_back_to_every_huggingface_key(gated: bool) -> None:
    files = converted(t5_keys(24, gated), MODEL_ARCH.T5ENCODER, 24)
    assert None not in files
    mapped = text_encoder_keys("t5encoder", list(files))
    assert mapped == files


@pytest.mark.parametrize("arch, qk_norm, qkv_bias", [(MODEL_ARCH.LLAMA, False, False), (MODEL_ARCH.QWEN2, False, True),
                                                     (MODEL_ARCH.QWEN3, True, False)], ids=["llama", "qwen2", "qwen3"])
def test_llm_names_map_back_to_every_huggingface_key(arch: MODEL_ARCH, qk_norm: bool, qkv_bias: bool) -> None:
    files = converted(llm_keys(4, qk_norm, qkv_bias), arch, 4)
    assert None not in files
    assert {name: llm_key(name) for name in files} == files


def test_decoder_tensors_are_unused_and_unknown_names_are_none() -> None:
    assert t5_key("dec.blk.0.attn_q.weight", gated=True) == UNUSED
    assert t5_key("dec.output_norm.weight", gated=True) == t5_key("output.weight", gated=False) == UNUSED
    assert t5_key("enc.blk.0.something_new.weight", gated=True) is None
    assert t5_key("blk.0.attn_q.weight", gated=True) is None  # an LLM name in a T5 file
    assert llm_key("enc.blk.0.attn_q.weight") is None and llm_key("rope_freqs.weight") is None
    with pytest.raises(ValueError, match="'flux' is not a text-encoder architecture"):
        text_encoder_keys("flux", [])


def test_only_llama_q_and_k_projections_are_permuted() -> None:
    assert permuted_heads("blk.3.attn_q.weight") == "q" and permuted_heads("blk.3.attn_k.bias") == "k"
    assert permuted_heads("blk.3.attn_v.weight") is None and permuted_heads("token_embd.weight") is None


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) does to a Q or K projection."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads, rows", [(4, 32), (8, 64), (2, 12)])
@pytest.mark.parametrize("qtype", ["Q8_0", "F16"])
def test_unpermuting_raw_rows_gives_the_huggingface_weight_bytes(heads: int, rows: int, qtype: str) -> None:
    hf = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    kind = GGMLQuantizationType[qtype]
    in_file = np.asarray(gguf_quants.quantize(llama_cpp_permute(hf, heads), kind)).reshape(-1).view(np.uint8)
    expected = np.asarray(gguf_quants.quantize(hf, kind)).reshape(-1).view(np.uint8)
    restored = unpermute_rows(torch.from_numpy(in_file.copy()), rows, heads)
    assert restored.is_contiguous() and np.array_equal(restored.numpy(), expected)


def test_rows_that_do_not_split_into_rotary_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be split into 4 heads"):
        unpermute_rows(torch.zeros(12 * 10, dtype=torch.uint8), 12, 4)
