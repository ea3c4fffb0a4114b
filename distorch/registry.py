"""The one global mutable object of the project: live streaming engines and cached bandwidth/topology probes.

Engines are held by weak reference, so registering one never keeps a model alive.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any


RECENT_PROMPTS = 20


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self.bandwidth_gbps: dict[str, float] = {}  # probe key -> measured GB/s
        self.topologies: dict[tuple[str, str], Any] = {}  # (machine, compute<-stores) -> probed Topology
        self._prompt_stats: deque[dict[str, Any]] = deque(maxlen=RECENT_PROMPTS)

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
        """Keep one prompt's telemetry (``PromptStats.as_dict()``) for the web view; the oldest drop out."""
        with self._lock:
            self._prompt_stats.append(stats)

    def recent_prompt_stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._prompt_stats)


REGISTRY = Registry()


def live_engines() -> list[Any]:
    return REGISTRY.live_engines()


def pinned_bytes_total() -> int:
    return REGISTRY.pinned_bytes_total()
