"""Which copies go through pinned chunks (distorch.host_transfer); the chunked copies themselves are
bit-exact on a GPU (tests/gpu/test_host_transfer_cuda.py)."""
import torch

from distorch.host_transfer import SMALL_BYTES, HostTransfers, worth_chunking

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


def test_large_contiguous_pageable_tensors_bound_for_a_gpu_are_chunked():
    big = torch.empty(SMALL_BYTES, dtype=torch.uint8)
    assert worth_chunking(big, CUDA)
    assert not worth_chunking(big[: SMALL_BYTES - 1], CUDA)  # small: a plain copy is cheaper
    assert not worth_chunking(big.view(1024, -1).t(), CUDA)  # not contiguous
    assert not worth_chunking(big, CPU)  # host to host


def test_everything_else_is_a_plain_copy():
    src = torch.arange(SMALL_BYTES * 2, dtype=torch.uint8)
    with HostTransfers() as transfers:
        moved = transfers.move(src, CPU)
        dst = torch.empty_like(src)
        transfers.copy_into(dst, src)
    assert torch.equal(moved, src) and torch.equal(dst, src)
    assert transfers._chunks is None  # no pinned buffers were made
