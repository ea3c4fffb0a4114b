"""distorch.quant.dequant_triton on the CPU, in Triton's interpreter: every kernel equals the torch path
bit for bit, for every output dtype, on random blocks with edge-value scales and partial tiles.

The interpreter is chosen when a kernel is *decorated*, so this file loads its own copy of the kernel
module with ``TRITON_INTERPRET=1`` (the engine's copy is left alone). The interpreter emulates the GPU
program (same integer/float32 operations, same masks and offsets); the GPU test
(tests/gpu/test_quant_cuda.py) checks the compiled kernels the same way.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

import distorch.quant.tensor as quant_tensor
from distorch.quant import types as T
from distorch.quant.dequant_torch import dequantize_torch
from quant_blocks import assert_same_floats, mixed_raw

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/Inf scales are inputs here
KERNEL_FILE = Path(quant_tensor.__file__).with_name("dequant_triton.py")


def load_interpreted_kernels():
    pytest.importorskip("triton", reason="triton is not installed")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("distorch.quant._dequant_triton_interpreted", KERNEL_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # one tiny launch: an interpreter that cannot run at all is a skip, not a failure of ours
        module.dequantize_into(torch.zeros(34, dtype=torch.uint8), T.Q8_0, torch.empty(32))
    except Exception as error:  # pragma: no cover - depends on the installed triton
        pytest.skip(f"the Triton interpreter is unusable here: {type(error).__name__}: {error}")
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


@pytest.fixture(scope="module")
def kernels():
    return load_interpreted_kernels()


KERNEL_TYPES = [t for t in T.SUPPORTED_TYPES if t.is_quantized]
OUT_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def blocks_for(qtype, programs):
    """Enough blocks for ``programs`` full programs at 64 rows each, and a partial one."""
    rows_per_block = qtype.block_size // 32
    return programs * 64 // rows_per_block + 3


def run_kernel(kernels, raw, qtype, out_dtype, spare=0, **launch):
    numel = raw.numel() // qtype.type_size * qtype.block_size
    out = torch.full((numel + spare,), -7.0, dtype=out_dtype)
    kernels.dequantize_into(raw, qtype, out, **launch)
    return out


def test_the_kernel_table_is_what_the_backend_chooser_assumes(kernels):
    assert set(kernels.KERNELS) == set(quant_tensor._TRITON_TYPES) == set(KERNEL_TYPES)
    assert tuple(kernels.OUT_DTYPES) == quant_tensor._TRITON_OUT_DTYPES


@pytest.mark.parametrize("qtype", KERNEL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
def test_kernel_equals_the_torch_path_bitwise(kernels, qtype, out_dtype):
    for seed, programs in [(0, 2), (1, 1), (2, 0)]:  # several tensors; each ends in a partial tile
        raw = torch.from_numpy(mixed_raw(qtype, blocks_for(qtype, programs), seed=seed))
        assert_same_floats(run_kernel(kernels, raw, qtype, out_dtype), dequantize_torch(raw, qtype, out_dtype))


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("rows_per_program", [8, 128])
def test_other_tile_sizes_give_the_same_values(kernels, qtype, rows_per_program):
    raw = torch.from_numpy(mixed_raw(qtype, blocks_for(qtype, 1), seed=9))
    result = run_kernel(kernels, raw, qtype, torch.bfloat16, rows_per_program=rows_per_program, num_warps=2)
    assert_same_floats(result, dequantize_torch(raw, qtype, torch.bfloat16))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q3_K], ids=lambda t: t.name)
def test_elements_past_the_weight_are_not_written(kernels, qtype):
    raw = torch.from_numpy(mixed_raw(qtype, 5, seed=4))
    result = run_kernel(kernels, raw, qtype, torch.float16, spare=300)
    assert torch.equal(result[-300:], torch.full((300,), -7.0, dtype=torch.float16))


def test_unaligned_raw_bytes_are_read_correctly(kernels):
    # float16 scales are assembled from single bytes, so an odd start address is fine
    raw = torch.from_numpy(mixed_raw(T.Q5_K, 3, seed=5))
    padded = torch.zeros(raw.numel() + 1, dtype=torch.uint8)
    padded[1:] = raw
    assert_same_floats(run_kernel(kernels, padded[1:], T.Q5_K, torch.float32), dequantize_torch(raw, T.Q5_K))
