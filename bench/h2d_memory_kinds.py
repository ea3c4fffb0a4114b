"""Which kind of page-locked host memory feeds the GPU fastest, at the engine's block sizes.

Prints one JSON line per memory kind: GB/s of back-to-back block-sized host-to-device copies on one copy
stream (what the streamer does), for
  host_alloc     torch.empty(pin_memory=True)  (cudaHostAlloc; rounds sizes up to powers of two)
  registered     torch.empty + cudaHostRegister (exact size; what distorch.arena.HostArena did first)
  registered_thp anonymous mmap advised MADV_HUGEPAGE, touched, then cudaHostRegister
  split_2        registered, each block copied as two halves on two copy streams
  registered_under_compute_split_N  the copies alone, timed on the copy stream, while bf16 matmuls run on
                 the compute stream (N = 1 or 2 copy streams)
A benchmark, never a test. Usage: python bench/h2d_memory_kinds.py [--block-mb 680] [--blocks 16]
"""
from __future__ import annotations

import argparse
import json
import mmap
import pathlib

import torch


def thp_mode() -> str:
    path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.read_text().strip() if path.exists() else "unknown"


def register(t: torch.Tensor) -> None:
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister failed: {err}")


def thp_buffer(nbytes: int) -> tuple[torch.Tensor, mmap.mmap]:
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    t = torch.frombuffer(buf, dtype=torch.uint8)
    t.fill_(1)
    return t, buf


def timed_copies(src: torch.Tensor, block: int, blocks: int, split: int, repeats: int = 3) -> float:
    dev = torch.device("cuda", 0)
    dst = torch.empty(2 * block, dtype=torch.uint8, device=dev)
    streams = [torch.cuda.Stream(dev) for _ in range(split)]
    best = 0.0
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        part = block // split
        for i in range(blocks):
            slot = (i % 2) * block
            for k, s in enumerate(streams):
                with torch.cuda.stream(s):
                    dst[slot + k * part: slot + (k + 1) * part].copy_(src[i * block + k * part: i * block + (k + 1) * part], non_blocking=True)
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        end.record()
        torch.cuda.synchronize()
        gbps = blocks * block / (start.elapsed_time(end) / 1e3) / 1e9
        best = max(best, gbps)
    return best


def copy_rate_under_compute(src: torch.Tensor, block: int, blocks: int, split: int) -> float:
    """GB/s of the copies alone (events on the copy streams) while the compute stream runs matmuls."""
    dev = torch.device("cuda", 0)
    dst = torch.empty(2 * block, dtype=torch.uint8, device=dev)
    streams = [torch.cuda.Stream(dev) for _ in range(split)]
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    for _ in range(600):  # ~0.8 s of compute queued ahead of and alongside the copies
        a = (a @ a).clamp_(-1, 1)
    first, last = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    part = block // split
    with torch.cuda.stream(streams[0]):
        first.record()
    for s in streams[1:]:
        s.wait_event(first)
    for i in range(blocks):
        slot = (i % 2) * block
        for k, s in enumerate(streams):
            with torch.cuda.stream(s):
                dst[slot + k * part: slot + (k + 1) * part].copy_(src[i * block + k * part: i * block + (k + 1) * part], non_blocking=True)
    for s in streams[1:]:
        streams[0].wait_stream(s)
    with torch.cuda.stream(streams[0]):
        last.record()
    torch.cuda.synchronize()
    return blocks * block / (first.elapsed_time(last) / 1e3) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-mb", type=int, default=680)
    ap.add_argument("--blocks", type=int, default=16)
    args = ap.parse_args()
    block, blocks = args.block_mb * 1_000_000 // 256 * 256, args.blocks
    total = block * blocks
    base = {"block_bytes": block, "blocks": blocks, "thp": thp_mode()}

    pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    pinned.fill_(1)
    print(json.dumps({**base, "kind": "host_alloc", "GBps": timed_copies(pinned, block, blocks, 1)}), flush=True)
    del pinned

    plain = torch.empty(total, dtype=torch.uint8)
    plain.fill_(1)
    register(plain)
    print(json.dumps({**base, "kind": "registered", "GBps": timed_copies(plain, block, blocks, 1)}), flush=True)
    print(json.dumps({**base, "kind": "split_2", "GBps": timed_copies(plain, block, blocks, 2)}), flush=True)
    # The same copies while matmuls run on the compute stream (the copy events time only the copy stream).
    for split in (1, 2):
        gbps = copy_rate_under_compute(plain, block, blocks, split)
        print(json.dumps({**base, "kind": f"registered_under_compute_split_{split}", "GBps": gbps}), flush=True)
    torch.cuda.cudart().cudaHostUnregister(plain.data_ptr())
    del plain

    thp, keep = thp_buffer(total)
    register(thp)
    print(json.dumps({**base, "kind": "registered_thp", "GBps": timed_copies(thp, block, blocks, 1)}), flush=True)
    torch.cuda.cudart().cudaHostUnregister(thp.data_ptr())
    del thp
    keep.close()


if __name__ == "__main__":
    main()
