"""distorch.quant.tensor and .scratch: QuantSpec, dequantize into reusable buffers, the scratch pool."""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gguf_quants

from distorch.errors import QuantError
from distorch.quant import QuantSpec, ScratchPool, choose_backend, dequantize, has_triton_kernel
from distorch.quant import types as T
from distorch.quant.dequant_torch import dequantize_torch
from quant_helpers import assert_same_floats, random_raw, reference

ALL_TYPES = pytest.mark.parametrize("qtype", T.SUPPORTED_TYPES, ids=lambda t: t.name)


def weight(qtype, shape, seed=0):
    spec = QuantSpec(qtype, shape)
    return torch.from_numpy(random_raw(spec.qtype, spec.nbytes // spec.qtype.type_size, seed)), spec


def test_a_spec_derives_its_raw_size_and_normalises_type_and_shape():
    spec = QuantSpec(GGMLQuantizationType.Q4_K, torch.Size([3072, 12288]))
    assert spec.qtype is T.Q4_K and spec.shape == (3072, 12288)
    assert spec.nbytes == 3072 * 12288 // 256 * 144 and spec.numel == 3072 * 12288
    assert spec == QuantSpec("Q4_K", [3072, 12288]) and len({spec, QuantSpec(12, (3072, 12288))}) == 1


def test_a_spec_refuses_bad_shapes_and_types():
    with pytest.raises(QuantError, match="Q8_0 tensor shape \\(64, 48\\)"):
        QuantSpec("Q8_0", (64, 48))
    with pytest.raises(QuantError, match="IQ2_XXS"):
        QuantSpec(16, (256,))


@ALL_TYPES
def test_dequantize_returns_the_logical_shape_with_reference_values(qtype):
    raw, spec = weight(qtype, (4, 2 * qtype.block_size), seed=2)
    result = dequantize(raw, spec)
    assert result.shape == (4, 2 * qtype.block_size) and result.dtype == torch.float32
    assert_same_floats(result.reshape(-1), reference(raw.numpy(), spec.qtype))


@ALL_TYPES
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_out_dtype_equals_float32_then_cast(qtype, out_dtype):
    raw, spec = weight(qtype, (3, 512), seed=4)
    expected = torch.from_numpy(reference(raw.numpy(), spec.qtype)).to(out_dtype).view(3, 512)
    assert_same_floats(dequantize(raw, spec, out_dtype), expected)


@ALL_TYPES
def test_out_is_written_in_place_and_its_tail_is_left_alone(qtype):
    raw, spec = weight(qtype, (2, 256), seed=5)
    out = torch.full((2 * 256 + 100,), 3.0, dtype=torch.bfloat16)
    result = dequantize(raw, spec, out=out)  # out_dtype taken from out
    assert result.data_ptr() == out.data_ptr() and result.shape == (2, 256) and result.dtype == torch.bfloat16
    assert_same_floats(out[:512], dequantize_torch(raw, spec.qtype, torch.bfloat16))
    assert torch.equal(out[512:], torch.full((100,), 3.0, dtype=torch.bfloat16))


def test_out_reused_across_weights_keeps_one_storage_and_gives_each_weight_exactly():
    out = torch.empty(4096 * 2, dtype=torch.float16)
    for seed, (qtype, shape) in enumerate([("Q8_0", (64, 128)), ("Q4_K", (16, 512)), ("Q6_K", (32, 256)),
                                           ("IQ4_XS", (8, 256)), ("F16", (4096,))]):
        raw, spec = weight(qtype, shape, seed)
        result = dequantize(raw, spec, torch.float16, out=out)
        assert result.data_ptr() == out.data_ptr()
        assert_same_floats(result.reshape(-1), torch.from_numpy(reference(raw.numpy(), spec.qtype)).half())


@pytest.mark.parametrize("out,problem", [
    (torch.empty(8192, dtype=torch.float16), "dtype torch.float16 is not torch.bfloat16"),
    (torch.empty(100, dtype=torch.bfloat16), "holds 100 elements, fewer than 8192"),
    (torch.empty(2, 8192, dtype=torch.bfloat16)[:, ::2], "not contiguous"),
], ids=["dtype", "size", "strided"])
def test_a_wrong_out_buffer_is_refused_saying_why(out, problem):
    raw, spec = weight("Q8_0", (64, 128))
    with pytest.raises(QuantError, match=problem):
        dequantize(raw, spec, torch.bfloat16, out=out)


def test_raw_bytes_of_the_wrong_size_or_dtype_are_refused():
    raw, spec = weight("Q4_0", (8, 64))
    with pytest.raises(QuantError, match=f"needs {spec.nbytes} raw bytes"):
        dequantize(raw[:-18], spec)
    with pytest.raises(QuantError, match="1-D uint8"):
        dequantize(raw.view(torch.int8), spec)


def test_on_cpu_the_torch_path_is_chosen_and_triton_cannot_be_forced():
    raw, spec = weight("Q4_K", (2, 256))
    assert choose_backend(raw, spec, torch.bfloat16) == "torch"
    with pytest.raises(QuantError, match="no Triton kernel for Q4_K"):
        dequantize(raw, spec, torch.bfloat16, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        dequantize(raw, spec, torch.bfloat16, backend="cuda")


def test_triton_kernels_exist_for_every_quantized_type_and_no_plain_type():
    assert [t.name for t in T.SUPPORTED_TYPES if has_triton_kernel(t)] == [
        t.name for t in T.SUPPORTED_TYPES if t.is_quantized]


def test_a_weight_read_from_a_gguf_file_dequantizes_like_the_reference():
    # How the integrator gets a spec from gguf's reader: GGUF lists dimensions innermost first.
    rows = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.gguf"
        writer = GGUFWriter(str(path), "test")
        writer.add_tensor("w", gguf_quants.quantize(rows, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tensor = GGUFReader(str(path)).tensors[0]
        spec = QuantSpec(tensor.tensor_type, tuple(reversed(tensor.shape.tolist())))
        raw = torch.from_numpy(np.array(tensor.data).view(np.uint8).reshape(-1))
        assert spec.shape == (8, 96) and spec.nbytes == tensor.n_bytes == raw.numel()
        result = dequantize(raw, spec)
        expected = gguf_quants.dequantize(np.array(tensor.data), tensor.tensor_type)
    assert_same_floats(result, expected)


# ---- ScratchPool ----------------------------------------------------------------------------------

def test_the_pool_hands_out_one_buffer_per_dtype_and_slot_grown_to_the_largest_request():
    pool = ScratchPool()
    first = pool.buffer(100, torch.bfloat16, "cpu")
    again = pool.buffer(60, torch.bfloat16, "cpu")
    assert again.data_ptr() == first.data_ptr() and again.numel() == 60
    grown = pool.buffer(500, torch.bfloat16, "cpu")
    assert grown.numel() == 500 and pool.buffer(100, torch.bfloat16, "cpu").data_ptr() == grown.data_ptr()
    other_slot = pool.buffer(10, torch.bfloat16, "cpu", slot=1)
    other_dtype = pool.buffer(10, torch.float16, "cpu")
    assert len({grown.data_ptr(), other_slot.data_ptr(), other_dtype.data_ptr()}) == 3
    assert pool.nbytes == (500 + 10 + 10) * 2
    pool.clear()
    assert pool.nbytes == 0


def test_layer_after_layer_the_pool_reuses_the_same_memory_and_each_result_is_exact():
    pool = ScratchPool()
    weights = [weight(q, s, i) for i, (q, s) in enumerate([("Q4_K", (64, 256)), ("Q8_0", (32, 128)),
                                                           ("Q5_K", (16, 512)), ("Q2_K", (8, 256))])]
    pool.reserve([spec for _, spec in weights], torch.bfloat16, "cpu")
    base = pool.buffer(1, torch.bfloat16, "cpu").data_ptr()
    for _ in range(2):  # two "forwards"
        for raw, spec in weights:
            result = pool.dequantize(raw, spec, torch.bfloat16)
            assert result.data_ptr() == base and result.shape == spec.shape
            assert_same_floats(result.reshape(-1), torch.from_numpy(reference(raw.numpy(), spec.qtype)).bfloat16())
    assert pool.nbytes == 64 * 256 * 2


def test_two_slots_keep_a_weight_and_its_bias_alive_together():
    pool = ScratchPool()
    (w_raw, w_spec), (b_raw, b_spec) = weight("Q8_0", (4, 64), 1), weight("F32", (4,), 2)
    w = pool.dequantize(w_raw, w_spec, torch.float32)
    b = pool.dequantize(b_raw, b_spec, torch.float32, slot=1)
    assert_same_floats(w.reshape(-1), reference(w_raw.numpy(), T.Q8_0))
    assert_same_floats(b, reference(b_raw.numpy(), T.F32))


def test_importing_the_package_and_dequantizing_on_cpu_never_imports_triton_or_gguf():
    code = ("import sys, torch; from distorch.quant import QuantSpec, dequantize; "
            "dequantize(torch.zeros(144, dtype=torch.uint8), QuantSpec('Q4_K', (256,)), torch.bfloat16); "
            "print(sorted(m for m in ('triton', 'gguf') if m in sys.modules))")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
