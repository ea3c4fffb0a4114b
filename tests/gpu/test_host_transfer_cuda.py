"""Pageable host <-> GPU copies through pinned chunks are bit-exact, whatever the chunk boundaries."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from distorch.host_transfer import HostTransfers, PinnedChunks  # noqa: E402

DEVICE = torch.device("cuda", 0)


@pytest.mark.parametrize("numel", [2**20, 3 * 2**20 + 7, 5 * 2**20])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.uint8])
def test_up_and_down_through_pinned_chunks_is_bit_exact(numel, dtype):
    src = torch.randn(numel).to(dtype) if dtype.is_floating_point else torch.randint(0, 256, (numel,), dtype=dtype)
    chunks = PinnedChunks(chunk_bytes=2**20 + 1)  # many chunks, boundaries inside elements
    with HostTransfers() as transfers:
        transfers._chunks = chunks
        up = transfers.move(src, DEVICE)
        down = torch.empty_like(src)
        transfers.copy_into(down, up * 1)  # a fresh GPU tensor, written by a kernel just before
        assert not down.is_pinned()
    torch.cuda.synchronize()
    assert up.device == DEVICE and torch.equal(up.cpu(), src)
    assert torch.equal(down, src)
