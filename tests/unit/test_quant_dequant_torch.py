"""distorch.quant.dequant_torch: every type equals gguf's numpy reference bit for bit in float32.

The reference is ``gguf.quants.dequantize``; inputs are random blocks (all byte patterns are valid
blocks), blocks with edge-value scales (+-0, +-Inf, NaN, subnormals, the largest float16) and constant
payloads, and real quantized data from ``gguf.quants.quantize`` for the types it can quantize.
"""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from hypothesis import given, settings

from distorch.errors import QuantError
from distorch.quant import types as T
from distorch.quant.dequant_torch import dequantize_torch
from quant_helpers import PROPERTY, SPECIAL_F16, SCALE_OFFSETS, assert_same_floats, random_raw, raw_blocks, reference

ALL_TYPES = pytest.mark.parametrize("qtype", T.SUPPORTED_TYPES, ids=lambda t: t.name)
# What gguf 0.19 can quantize (the K-quants and IQ4 have no numpy quantizer there).
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]


@ALL_TYPES
def test_random_blocks_equal_the_reference_bitwise(qtype):
    @settings(PROPERTY, max_examples=60)
    @given(raw=raw_blocks(qtype))
    def check(raw):
        assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype), reference(raw, qtype))

    check()


@ALL_TYPES
def test_a_thousand_random_blocks_equal_the_reference_bitwise(qtype):
    raw = random_raw(qtype, 1000, seed=qtype.type_id)
    expected = reference(raw, qtype)
    assert np.isnan(expected).any()  # random scales hit NaN (and with it the NaN-equality path)
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype), expected)


@ALL_TYPES
def test_every_special_scale_in_every_scale_field_equals_the_reference(qtype):
    raw = random_raw(qtype, len(SPECIAL_F16) * len(SCALE_OFFSETS[qtype]), seed=7).reshape(-1, qtype.type_size)
    block = 0
    for offset in SCALE_OFFSETS[qtype]:
        for bits in SPECIAL_F16:
            raw[block, offset : offset + 2] = np.frombuffer(bits.to_bytes(2, "little"), dtype=np.uint8)
            block += 1
    raw = raw.reshape(-1)
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype), reference(raw, qtype))


@ALL_TYPES
def test_output_has_block_size_elements_per_block_and_zero_blocks_give_nothing(qtype):
    assert dequantize_torch(torch.from_numpy(random_raw(qtype, 3, seed=1)), qtype).shape == (3 * qtype.block_size,)
    empty = dequantize_torch(torch.empty(0, dtype=torch.uint8), qtype, torch.bfloat16)
    assert empty.shape == (0,) and empty.dtype == torch.bfloat16


@ALL_TYPES
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_out_dtype_equals_float32_then_cast(qtype, out_dtype):
    raw = torch.from_numpy(random_raw(qtype, 64, seed=3))
    assert_same_floats(dequantize_torch(raw, qtype, out_dtype), dequantize_torch(raw, qtype).to(out_dtype))


@ALL_TYPES
def test_unaligned_or_strided_raw_bytes_decode_the_same(qtype):
    raw = random_raw(qtype, 9, seed=11)
    expected = reference(raw, qtype)
    padded = torch.zeros(raw.size + 1, dtype=torch.uint8)
    padded[1:] = torch.from_numpy(raw)
    assert padded[1:].storage_offset() % 2 == 1
    assert_same_floats(dequantize_torch(padded[1:], qtype), expected)
    spread = torch.zeros(2 * raw.size, dtype=torch.uint8)
    spread[::2] = torch.from_numpy(raw)
    assert_same_floats(dequantize_torch(spread[::2], qtype), expected)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_data_quantized_by_gguf_decodes_to_the_reference_and_close_to_the_original(qtype):
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((6, 512)).astype(np.float32) * np.float32([[1], [1e-3], [300], [0], [1], [1]])
    rows[4] = 2.5  # a constant row
    rows[5, ::7] = -40.0  # outliers
    raw = np.ascontiguousarray(gguf_quants.quantize(rows, GGMLQuantizationType(qtype.type_id))).view(np.uint8).reshape(-1)
    assert raw.size == T.raw_nbytes(rows.shape, qtype)
    decoded = dequantize_torch(torch.from_numpy(raw), qtype)
    assert_same_floats(decoded, reference(raw, qtype))
    if not qtype.is_quantized:  # rounding to bf16/f16 (8/11 mantissa bits), f16 subnormals absolutely
        assert np.allclose(decoded.numpy().reshape(rows.shape), rows, rtol=2**-8, atol=1e-7)
        return
    # a wrong layout (nibble order, scale position) gives errors of the order of the row's range, far
    # above one quantization step (block range / levels, plus float16 rounding of the scale)
    blocks = rows.reshape(-1, qtype.block_size)
    levels = {T.Q8_0: 127, T.Q4_0: 8, T.Q4_1: 15, T.Q5_0: 16, T.Q5_1: 31}[qtype]
    step = (blocks.max(axis=1) - blocks.min(axis=1)) / levels + np.abs(blocks).max(axis=1) * 2**-9
    error = np.abs(decoded.numpy().reshape(blocks.shape) - blocks).max(axis=1)
    assert (error <= step + 1e-30).all(), error / np.maximum(step, 1e-30)


def test_q8_0_layout_by_hand():
    # one block: scale 0.5 (float16 0x3800), then int8 quants 0, 1, -1, 127, -128, 2, ...
    quants = np.array([0, 1, -1, 127, -128] + [2] * 27, dtype=np.int8)
    raw = np.concatenate([np.frombuffer((0x3800).to_bytes(2, "little"), np.uint8), quants.view(np.uint8)])
    assert dequantize_torch(torch.from_numpy(raw), T.Q8_0)[:5].tolist() == [0.0, 0.5, -0.5, 63.5, -64.0]


def test_q4_0_layout_by_hand():
    # scale 1.0; byte k holds element k in its low nibble and element k + 16 in its high nibble; minus 8
    qs = np.array([(k % 16) | ((15 - k % 16) << 4) for k in range(16)], dtype=np.uint8)
    raw = np.concatenate([np.frombuffer((0x3C00).to_bytes(2, "little"), np.uint8), qs])
    values = dequantize_torch(torch.from_numpy(raw), T.Q4_0).tolist()
    assert values == [float(k - 8) for k in range(16)] + [float(7 - k) for k in range(16)]


@pytest.mark.parametrize("bad", [torch.zeros(34, dtype=torch.int8), torch.zeros(2, 34, dtype=torch.uint8)],
                         ids=["int8", "2-d"])
def test_raw_must_be_1d_uint8(bad):
    with pytest.raises(QuantError, match="1-D uint8"):
        dequantize_torch(bad, "Q8_0")


def test_raw_must_hold_whole_blocks():
    with pytest.raises(QuantError, match="35 bytes are not whole Q8_0 blocks of 34 bytes"):
        dequantize_torch(torch.zeros(35, dtype=torch.uint8), "Q8_0")
