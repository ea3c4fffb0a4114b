"""The one global mutable object of the project: live streaming engines, cached bandwidth/topology probes, the
last prompts' telemetry and the running totals behind the metrics' counters.

Engines are held by weak reference, so registering one never keeps a model alive; the totals are plain numbers,
so they outlive engines and model unloads (a counter must never go down).
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any


RECENT_PROMPTS = 20
# PromptStats.as_dict() key -> running total; "prompts" counts the records themselves
TOTALLED = ("forwards", "streamed_bytes", "copy_seconds", "stall_seconds", "misses")


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self.bandwidth_gbps: dict[str, float] = {}  # probe key -> measured GB/s
        self.topologies: dict[tuple[str, str], Any] = {}  # (machine, compute<-stores) -> probed Topology
        self._prompt_stats: deque[dict[str, Any]] = deque(maxlen=RECENT_PROMPTS)
        self._totals: dict[str, float] = {"prompts": 0, **{key: 0 for key in TOTALLED}}

    def add_engine(self, engine: Any) -> None:
        with self._lock:
            self._engines.add(engine)

    def live_engines(self) -> list[Any]:
        with self._lock:
            return list(self._engines)

    def pinned_bytes_total(self) -> int:
        """Host bytes page-locked by all live engines together."""
        return sum(engine.pinned_bytes for engine in self.live_engines())

    def record_prompt_stats(self, stats: dict[str, Any]) -> None:
        """Keep one prompt's telemetry (``PromptStats.as_dict()``) for the web view (the oldest drop out) and
        add it to the running totals."""
        with self._lock:
            self._prompt_stats.append(stats)
            self._totals["prompts"] += 1
            for key in TOTALLED:
                self._totals[key] += stats.get(key) or 0

    def streaming_totals(self) -> dict[str, float]:
        """Running totals over every prompt recorded in this process: prompts, forwards, streamed_bytes,
        copy_seconds, stall_seconds, misses."""
        with self._lock:
            return dict(self._totals)

    def recent_prompt_stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._prompt_stats)


REGISTRY = Registry()


def live_engines() -> list[Any]:
    return REGISTRY.live_engines()


def pinned_bytes_total() -> int:
    return REGISTRY.pinned_bytes_total()
