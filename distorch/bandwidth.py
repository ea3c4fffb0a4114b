"""Measured copy bandwidth to the compute GPU, which the planner uses to weigh stores.

Results are cached per process in :data:`distorch.registry.REGISTRY` and, when a path is given, in a
JSON file (keyed by probe), so the probe runs once per machine rather than once per prompt.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from .registry import REGISTRY

GB = 1e9


def _cached(key: str, cache_path: str | os.PathLike | None) -> float | None:
    if key in REGISTRY.bandwidth_gbps:
        return REGISTRY.bandwidth_gbps[key]
    if cache_path is not None and Path(cache_path).is_file():
        try:
            value = json.loads(Path(cache_path).read_text()).get(key)
        except (OSError, ValueError):
            return None  # a corrupt cache only costs a new probe
        if isinstance(value, (int, float)):
            REGISTRY.bandwidth_gbps[key] = float(value)
            return float(value)
    return None


def _remember(key: str, gbps: float, cache_path: str | os.PathLike | None) -> float:
    REGISTRY.bandwidth_gbps[key] = gbps
    if cache_path is not None:
        path = Path(cache_path)
        try:
            stored = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            stored = {}
        stored[key] = gbps
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2, sort_keys=True))
    return gbps


def _time_copies(dst: torch.Tensor, src: torch.Tensor, stream_device: torch.device, repeats: int) -> float:
    """Best GB/s of ``repeats`` copies of ``src`` into ``dst`` (after one warm-up copy)."""
    stream = torch.cuda.Stream(stream_device)
    best = 0.0
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=True)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
            end.synchronize()
            best = max(best, src.numel() * src.element_size() / (start.elapsed_time(end) / 1000.0) / GB)
    return best


def _measure(key: str, cache_path: str | os.PathLike | None, repeats: int, stream_device: torch.device,
             make_source: Callable[[], torch.Tensor], make_target: Callable[[], torch.Tensor]) -> float:
    """The cached figure for ``key``, else time copies between freshly made buffers and remember the result."""
    cached = _cached(key, cache_path)
    if cached is not None:
        return cached
    source, target = make_source(), make_target()
    gbps = _time_copies(target, source, stream_device, repeats)
    del source, target
    return _remember(key, gbps, cache_path)


def measure_h2d_bandwidth(
    device: str | torch.device,
    nbytes: int = 1 << 30,
    pinned: bool = True,
    repeats: int = 3,
    cache_path: str | os.PathLike | None = None,
) -> float | None:
    """Host-to-``device`` copy bandwidth in GB/s (1e9 bytes/s); ``None`` when ``device`` is no GPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    key = f"h2d:{device}:{'pinned' if pinned else 'pageable'}:{nbytes}"
    return _measure(key, cache_path, repeats, device,
                    lambda: torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned),
                    lambda: torch.empty(nbytes, dtype=torch.uint8, device=device))


def measure_d2d_bandwidth(
    src: str | torch.device,
    dst: str | torch.device,
    nbytes: int = 256 << 20,
    repeats: int = 3,
    cache_path: str | os.PathLike | None = None,
) -> float | None:
    """``src`` GPU to ``dst`` GPU copy bandwidth in GB/s, issued on the source's stream as the
    streamer does for donor GPUs; ``None`` unless both are GPUs."""
    src, dst = torch.device(src), torch.device(dst)
    if src.type != "cuda" or dst.type != "cuda" or not torch.cuda.is_available():
        return None
    key = f"d2d:{src}->{dst}:{nbytes}"
    return _measure(key, cache_path, repeats, src,
                    lambda: torch.empty(nbytes, dtype=torch.uint8, device=src),
                    lambda: torch.empty(nbytes, dtype=torch.uint8, device=dst))
