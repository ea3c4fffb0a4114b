"""Dequantization on a real GPU: the torch path equals the CPU (and so gguf's reference) bit for bit, the
compiled Triton kernels equal the torch path bit for bit, and scratch reuse allocates nothing."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from distorch.quant import QuantSpec, ScratchPool, dequantize, triton_usable  # noqa: E402
from distorch.quant import types as T  # noqa: E402
from distorch.quant.dequant_torch import dequantize_torch  # noqa: E402
from distorch.quant.tensor import _TRITON_TYPES  # noqa: E402
from quant_blocks import assert_same_floats, mixed_raw  # noqa: E402

DEVICE = torch.device("cuda", 0)
ALL_TYPES = pytest.mark.parametrize("qtype", T.SUPPORTED_TYPES, ids=lambda t: t.name)
TRITON_TYPES = pytest.mark.parametrize("qtype", [t for t in T.SUPPORTED_TYPES if t in _TRITON_TYPES],
                                       ids=lambda t: t.name)
OUT_DTYPES = pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
needs_triton = pytest.mark.skipif(not torch.cuda.is_available() or not triton_usable(DEVICE),
                                  reason="triton is not usable on this machine")


def cuda_raw(qtype, n_blocks, seed):
    return torch.from_numpy(mixed_raw(qtype, n_blocks, seed)).to(DEVICE)


@ALL_TYPES
def test_torch_path_on_cuda_equals_torch_path_on_cpu_in_float32(qtype):
    for seed, n_blocks in [(0, 1), (1, 37), (2, 4099)]:
        raw = cuda_raw(qtype, n_blocks, seed)
        assert_same_floats(dequantize_torch(raw, qtype), dequantize_torch(raw.cpu(), qtype))


@needs_triton
@TRITON_TYPES
@OUT_DTYPES
def test_triton_equals_torch_on_cuda_bitwise(qtype, out_dtype):
    for seed, n_blocks in [(0, 1), (1, 37), (2, 4099), (3, 65536 + 5)]:
        raw = cuda_raw(qtype, n_blocks, seed)
        spec = QuantSpec(qtype, (n_blocks * qtype.block_size,))
        triton_result = dequantize(raw, spec, out_dtype, backend="triton")
        assert_same_floats(triton_result, dequantize(raw, spec, out_dtype, backend="torch"))


@needs_triton
@TRITON_TYPES
def test_auto_picks_triton_on_cuda_and_agrees_with_a_flux_sized_weight(qtype):
    spec = QuantSpec(qtype, (3072, 3072))
    raw = torch.randint(0, 256, (spec.nbytes,), dtype=torch.uint8, device=DEVICE)
    assert_same_floats(dequantize(raw, spec, torch.bfloat16), dequantize(raw, spec, torch.bfloat16, backend="torch"))


@needs_triton
def test_triton_offsets_past_two_to_the_31_elements():
    # int64 offsets: a Q4_0 weight of 2**31 + 64 elements (1.2 GB raw, 4.3 GB of bf16)
    qtype = T.Q4_0
    n_blocks = (1 << 31) // 32 + 2
    free, _ = torch.cuda.mem_get_info(DEVICE)
    if free < 12e9:
        pytest.skip(f"needs about 12 GB of free GPU memory, {free / 1e9:.1f} GB free")
    raw = torch.randint(0, 256, (n_blocks * qtype.type_size,), dtype=torch.uint8, device=DEVICE)
    out = dequantize(raw, QuantSpec(qtype, (n_blocks * 32,)), torch.bfloat16, backend="triton")
    tail = raw[-1000 * qtype.type_size :]
    assert_same_floats(out[-1000 * 32 :], dequantize_torch(tail, qtype, torch.bfloat16))
    assert_same_floats(out[: 1000 * 32], dequantize_torch(raw[: 1000 * qtype.type_size], qtype, torch.bfloat16))


def layer_weights():
    shapes = [("Q8_0", (3072, 3072)), ("Q4_K", (12288, 3072)), ("Q6_K", (3072, 12288)), ("Q5_K", (3072, 3072)),
              ("F32", (3072,))]
    weights = []
    for qtype, shape in shapes:
        spec = QuantSpec(qtype, shape)
        weights.append((torch.randint(0, 256, (spec.nbytes,), dtype=torch.uint8, device=DEVICE), spec))
    return weights


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_scratch_reuse_allocates_nothing_after_warm_up(backend):
    weights = layer_weights()
    pool = ScratchPool()

    def forward():
        for raw, spec in weights:
            pool.dequantize(raw, spec, torch.bfloat16, backend=backend)

    forward()  # warm-up: grows the buffer, compiles kernels, makes the IQ4 tables
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(DEVICE)
    torch.cuda.reset_peak_memory_stats(DEVICE)
    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(DEVICE) == before
    if backend == "triton":  # not even a temporary: the kernels write straight into the scratch buffer
        assert torch.cuda.max_memory_allocated(DEVICE) == before
    assert pool.nbytes == 12288 * 3072 * 2


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_dequantizing_never_synchronises_with_the_host(backend):
    weights = layer_weights() + [(cuda_raw(T.IQ4_XS, 64, 0), QuantSpec("IQ4_XS", (64, 256)))]
    pool = ScratchPool()
    for raw, spec in weights:
        pool.dequantize(raw, spec, torch.bfloat16, backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for raw, spec in weights:
            pool.dequantize(raw, spec, torch.bfloat16, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_triton
def test_triton_runs_on_the_current_stream():
    # On a side stream: a long sleep, then the raw bytes arrive (a copy), then the kernel. A kernel launched
    # on any other stream would run at once, during the sleep, and read zeros.
    source = cuda_raw(T.Q8_0, 4096, 0)
    raw = torch.zeros_like(source)
    spec = QuantSpec("Q8_0", (4096 * 32,))
    out = torch.zeros(spec.numel, dtype=torch.bfloat16, device=DEVICE)
    torch.cuda.synchronize()
    side = torch.cuda.Stream(DEVICE)
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 50 ms
        raw.copy_(source)
        dequantize(raw, spec, out=out, backend="triton")
    side.synchronize()
    assert_same_floats(out, dequantize_torch(source, T.Q8_0, torch.bfloat16))


@needs_triton
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_launches_on_the_raw_bytes_device_not_the_current_one():
    raw = torch.from_numpy(mixed_raw(T.Q4_K, 64, 1)).to("cuda:1")
    spec = QuantSpec("Q4_K", (64 * 256,))
    with torch.cuda.device(0):
        result = dequantize(raw, spec, torch.bfloat16, backend="triton")
    assert result.device == torch.device("cuda", 1)
    assert_same_floats(result, dequantize_torch(raw.cpu(), T.Q4_K, torch.bfloat16))
