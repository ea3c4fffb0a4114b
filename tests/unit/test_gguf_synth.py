"""scripts/synth/gguf_writer.py: the synthesizer's own Q8_0 quantizer and its random K-quant blocks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from synth.gguf_writer import STD, quantize_q8_0, random_blocks, tensor_type  # noqa: E402


def test_the_torch_q8_0_quantizer_gives_ggufs_bytes_ties_and_zero_blocks_included() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[0] = 0.0  # a zero block: scale 0, quants 0
    x[1, :32] = np.arange(32, dtype=np.float32) - 15.5  # scaled values land on .5 ties
    x[2, :32] = 127.0 * np.sign(rng.standard_normal(32)).astype(np.float32)
    expected = np.asarray(gguf_quants.quantize(x, GGMLQuantizationType.Q8_0)).reshape(-1).view(np.uint8)
    assert np.array_equal(quantize_q8_0(torch.from_numpy(x)).numpy().reshape(-1), expected)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL"])
def test_random_k_quant_blocks_decode_to_small_centred_finite_values(qtype: str) -> None:
    raw = random_blocks(qtype, 512, np.random.default_rng(1))
    dense = np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType[qtype]), dtype=np.float64)
    assert np.isfinite(dense).all()
    assert abs(dense.std() - STD) < 0.2 * STD and abs(dense.mean()) < 0.25 * STD


def test_types_follow_comfyui_ggufs_converter() -> None:
    cfg = {"qtype": "Q4_K", "plain": "F16", "hiprec": [".modulation"]}
    assert tensor_type("a.weight", (3072, 3072), cfg) == "Q4_K"
    assert tensor_type("a.bias", (3072,), cfg) == "F16"  # 1-D
    assert tensor_type("a.weight", (32, 32), cfg) == "F16"  # at most 1024 elements
    assert tensor_type("img_in.weight", (3072, 64), cfg) == "F16"  # 64 is not a whole 256-element block
    assert tensor_type("blocks.0.modulation", (1, 6, 3072), cfg) == "F16"  # high precision key
