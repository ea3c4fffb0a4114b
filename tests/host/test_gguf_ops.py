"""nodes/gguf_ops.py layer by layer: what each operation loads and computes, against plain torch on the
dequantized weights (gguf's own numpy dequantizer)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants


@pytest.fixture(scope="module")
def pkg(comfy_nodes):
    """Our package's modules as ComfyUI imported them."""
    root = comfy_nodes.NODE_CLASS_MAPPINGS["DisTorchUNETLoaderGGUF"].__module__.rsplit(".nodes.", 1)[0]
    return {name: sys.modules[f"{root}.{name}"] for name in
            ("nodes.gguf_ops", "nodes.quantized_weights", "distorch.quant")}


def quantized(pkg, values: np.ndarray, qtype: str, shape: tuple[int, ...] | None = None):
    """A stand-in for ``values`` quantized by gguf (laid out as ``values``' shape; logical ``shape``), and
    what gguf dequantizes it to, as float32 of the logical shape."""
    qw, quant = pkg["nodes.quantized_weights"], pkg["distorch.quant"]
    kind = GGMLQuantizationType[qtype]
    raw = np.asarray(gguf_quants.quantize(values, kind)).reshape(-1).view(np.uint8)
    logical = shape or values.shape
    source = qw.QuantizedSource(torch.from_numpy(raw.copy()), quant.QuantSpec(qtype, values.shape), logical,
                                "test.weight", "test.gguf")
    dense = torch.from_numpy(np.array(gguf_quants.dequantize(raw, kind), dtype=np.float32)).view(logical)
    return qw.stand_in(source, torch.bfloat16), dense, source


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def ops(pkg):
    return pkg["nodes.gguf_ops"].gguf_operations(pkg["distorch.quant"].ScratchPool())


def test_a_linear_allocates_nothing_until_it_loads_and_then_holds_raw_bytes(pkg, ops) -> None:
    layer = ops.Linear(256, 64, bias=True, dtype=torch.float32)
    assert layer.weight is None and list(layer.parameters()) == []
    weight, dense, source = quantized(pkg, rand(64, 256), "Q8_0")
    bias = torch.from_numpy(rand(64, seed=1)).half()
    assert layer.load_state_dict({"weight": weight, "bias": bias}, strict=True)
    assert source.consumed and layer.weight.dtype == torch.uint8 and layer.weight.data_ptr() == source.raw.data_ptr()
    assert layer.bias.dtype == torch.float16  # plain tensors keep their dtype; cast per forward
    x = torch.from_numpy(rand(3, 256, seed=2))
    assert torch.equal(layer(x), F.linear(x, dense, bias.float()))


def test_a_convolution_stored_reshaped_dequantizes_to_its_original_shape(pkg, ops) -> None:
    conv = ops.Conv2d(4, 8, kernel_size=3, padding=1, dtype=torch.float32)
    weight, dense, _ = quantized(pkg, rand(9, 32), "Q8_0", shape=(8, 4, 3, 3))  # ComfyUI-GGUF's SD1/SDXL layout
    bias = torch.from_numpy(rand(8, seed=1))
    conv.load_state_dict({"weight": weight, "bias": bias})
    x = torch.from_numpy(rand(1, 4, 6, 6, seed=2))
    assert torch.equal(conv(x), F.conv2d(x, dense, bias, padding=1))


def test_an_embedding_dequantizes_only_the_rows_it_looks_up_and_equals_the_whole_table(pkg, ops) -> None:
    embedding = ops.Embedding(1000, 256, dtype=torch.float16)
    weight, dense, _ = quantized(pkg, rand(1000, 256), "Q4_0")
    embedding.load_state_dict({"weight": weight})
    ids = torch.tensor([[5, 999, 0, 5], [17, 3, 3, 800]])
    rows = embedding(ids, out_dtype=torch.float32)
    assert rows.shape == (2, 4, 256) and torch.equal(rows, F.embedding(ids, dense))
    pool = type(embedding).scratch
    assert pool.nbytes == 0  # no scratch: only the looked-up rows were dequantized
    assert torch.equal(embedding(ids).float(), F.embedding(ids, dense.half()).float())  # the built dtype


def test_attached_patches_apply_after_dequantization_in_float32(pkg, ops) -> None:
    layer = ops.Linear(64, 32, bias=False, dtype=torch.float32)
    weight, dense, _ = quantized(pkg, rand(32, 64), "Q8_0")
    layer.load_state_dict({"weight": weight})
    diff = torch.from_numpy(rand(32, 64, seed=3)) * 0.01
    model = torch.nn.Sequential(layer)
    assert pkg["nodes.quantized_weights"].attach_patches(model, "0.weight", [(0.5, (diff,), 1.0, None, None)],
                                                         torch.device("cpu"))
    x = torch.from_numpy(rand(2, 64, seed=4))
    assert torch.equal(layer(x), F.linear(x, dense + 0.5 * diff))
    pkg["nodes.quantized_weights"].detach_patches(model, "0.weight")
    assert torch.equal(layer(x), F.linear(x, dense))


def test_a_tensor_of_the_wrong_shape_is_refused_as_torch_refuses_it(pkg, ops) -> None:
    layer = ops.Linear(256, 64, dtype=torch.float32)
    weight, _, source = quantized(pkg, rand(32, 256), "Q8_0")
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: copying a param with shape "
                                           r"torch.Size\(\[32, 256\]\) .* current model is torch.Size\(\[64, 256\]\)"):
        layer.load_state_dict({"weight": weight, "bias": torch.zeros(64)})
    assert not source.consumed


def test_a_norm_with_a_quantized_weight_is_dequantized_once_at_load(pkg, ops) -> None:
    norm = ops.LayerNorm(256, dtype=torch.float32)
    weight, dense, source = quantized(pkg, rand(256), "Q8_0")
    norm.load_state_dict({"weight": weight, "bias": torch.zeros(256)})
    assert source.consumed and norm.weight.dtype == torch.float32 and torch.equal(norm.weight.data, dense)


def test_a_missing_weight_is_reported_and_zero(pkg, ops) -> None:
    layer = ops.Linear(16, 8, dtype=torch.float32)
    result = layer.load_state_dict({"bias": torch.zeros(8)}, strict=False)
    assert result.missing_keys == ["weight"] and torch.equal(layer.weight, torch.zeros(8, 16))


def test_each_model_gets_its_own_scratch_pool(pkg) -> None:
    quant, gguf_ops = pkg["distorch.quant"], pkg["nodes.gguf_ops"]
    first, second = gguf_ops.gguf_operations(quant.ScratchPool()), gguf_ops.gguf_operations(quant.ScratchPool())
    assert first.Linear.scratch is not second.Linear.scratch and first.Linear.scratch is first.Conv2d.scratch
