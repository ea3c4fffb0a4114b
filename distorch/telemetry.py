"""What streaming cost, per forward: copy time, compute time, how much copy time compute waited for.

On CUDA every measurement is an event recorded on the stream doing the work; events are only read in
:meth:`Telemetry.summary` (one device synchronisation, at prompt end), never inside a forward. On the
synchronous CPU backend the same marks are ``time.perf_counter`` readings.

Definitions (per forward):
- ``forward_s``: from the forward root's forward start to its end (the engine's ``forward_root``, e.g. the
  diffusion model), else from the first streamed block's start to the last one's end, on the compute stream
  (stalls included).
- ``copy_s``: the sum of the copies' durations on their copy streams (each from after its slot became
  free to its last byte landing); the copies counted are those whose blocks ran in this forward,
  including ones issued ahead during the previous forward.
- ``stall_s``: the sum over streamed blocks of how long the compute stream waited for the block's copy:
  between two compute-stream marks, one before and one after its wait on the copy's ``ready`` event
  (both on the compute device, so this also works for copies from a donor GPU).
- ``overlap = 1 - stall_s / copy_s``: the fraction of copy time hidden under other work. 1.0 means no
  block ever waited. With the synchronous backend copies run on the compute thread, so overlap is 0.
- ``misses``: pipeline restarts (a block ran out of plan order, or the previous forward was cut short).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

GB = 1e9


@dataclass(frozen=True)
class ForwardStats:
    index: int
    forward_s: float
    copy_s: float
    stall_s: float
    streamed_bytes: int
    copies: int
    misses: int
    synchronous: bool = False
    # Per copy, seconds from the forward start: (copy start, copy end, block wanted it, block got it).
    # Negative times: copies issued ahead during the previous forward. Drawn by the web view.
    timeline: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def copy_idle_s(self) -> float:
        """Gaps between one copy's end and the next one's start inside this forward's copy window."""
        spans = sorted((start, end) for start, end, _, _ in self.timeline)
        return sum(max(0.0, nxt[0] - cur[1]) for cur, nxt in zip(spans, spans[1:]))

    @property
    def gbps(self) -> float | None:
        return self.streamed_bytes / self.copy_s / GB if self.copy_s > 0 else None

    @property
    def overlap(self) -> float | None:
        if self.synchronous:
            return 0.0
        return max(0.0, 1.0 - self.stall_s / self.copy_s) if self.copy_s > 0 else None


@dataclass(frozen=True)
class PromptStats:
    forwards: tuple[ForwardStats, ...]

    @property
    def forward_s(self) -> float:
        return sum(f.forward_s for f in self.forwards)

    @property
    def copy_s(self) -> float:
        return sum(f.copy_s for f in self.forwards)

    @property
    def stall_s(self) -> float:
        return sum(f.stall_s for f in self.forwards)

    @property
    def streamed_bytes(self) -> int:
        return sum(f.streamed_bytes for f in self.forwards)

    @property
    def misses(self) -> int:
        return sum(f.misses for f in self.forwards)

    @property
    def gbps(self) -> float | None:
        return self.streamed_bytes / self.copy_s / GB if self.copy_s > 0 else None

    @property
    def overlap(self) -> float | None:
        if any(f.synchronous for f in self.forwards):
            return 0.0
        return max(0.0, 1.0 - self.stall_s / self.copy_s) if self.copy_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable totals plus one entry per forward."""
        count = len(self.forwards)
        return {
            "forwards": count,
            "seconds_per_forward": self.forward_s / count if count else None,
            "streamed_bytes": self.streamed_bytes,
            "copy_seconds": self.copy_s,
            "stall_seconds": self.stall_s,
            "gbps": self.gbps,
            "overlap": self.overlap,
            "misses": self.misses,
            "per_forward": [dict(asdict(f), gbps=f.gbps, overlap=f.overlap, copy_idle_s=f.copy_idle_s)
                            for f in self.forwards],
        }

    def console_line(self) -> str:
        count = len(self.forwards)
        per_forward = f"{self.forward_s / count:.3f}" if count else "-"
        gbps = f"{self.gbps:.1f}" if self.gbps is not None else "-"
        overlap = f"{self.overlap * 100:.0f}%" if self.overlap is not None else "-"
        return (
            f"streaming: {count} forwards, {per_forward} s/forward, streamed {self.streamed_bytes / GB:.2f} GB "
            f"at {gbps} GB/s, overlap {overlap}, misses {self.misses}"
        )


class WallTimer:
    """Marks are ``perf_counter`` readings: for the synchronous backend."""

    synchronous = True

    def mark(self, stream: Any = None) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def sync(self) -> None:
        pass

    def recycle(self, marks: list) -> None:
        pass


class CudaTimer:
    """Marks are timing events recorded on a stream, reused from a pool after they were read."""

    synchronous = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: list[torch.cuda.Event] = []

    def mark(self, stream: torch.cuda.Stream | None = None) -> torch.cuda.Event:
        event = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
        event.record(stream if stream is not None else torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end) / 1000.0

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def recycle(self, marks: list) -> None:
        self._pool.extend(marks)


@dataclass
class _Copy:
    seq: int
    nbytes: int
    start: Any
    end: Any = None
    wanted: Any = None  # compute-stream mark when the block needing this copy came up
    got: Any = None  # compute-stream mark once the wait for the copy was over


@dataclass
class _Forward:
    index: int
    start: Any
    end: Any = None
    copies: list[_Copy] = field(default_factory=list)
    misses: int = 0


def _marks(forward: _Forward) -> list:
    marks = [forward.start, forward.end] + [m for c in forward.copies for m in (c.start, c.end, c.wanted, c.got)]
    return [m for m in marks if m is not None]


class Telemetry:
    """Collects marks during forwards; turns them into :class:`PromptStats` in :meth:`summary`."""

    def __init__(self, timer: WallTimer | CudaTimer, max_forwards: int = 10_000) -> None:
        self.timer = timer
        self.max_forwards = max_forwards  # bounds memory when nobody calls summary()
        self._pending: dict[int, _Copy] = {}  # copy sequence number -> issued, not yet consumed
        self._finished: list[_Forward] = []
        self._current: _Forward | None = None
        self._forward_count = 0
        self._loose_misses = 0  # misses outside any forward, credited to the next one

    def forward_started(self) -> None:
        self._current = _Forward(self._forward_count, self.timer.mark(), misses=self._loose_misses)
        self._forward_count += 1
        self._loose_misses = 0

    def forward_finished(self) -> None:
        if self._current is None:
            return
        self._current.end = self.timer.mark()
        self._finished.append(self._current)
        self._current = None
        if len(self._finished) > self.max_forwards:
            self.timer.recycle(_marks(self._finished.pop(0)))

    def copy_started(self, seq: int, nbytes: int, stream: Any = None) -> None:
        self._pending[seq] = _Copy(seq, nbytes, self.timer.mark(stream))

    def copy_finished(self, seq: int, stream: Any = None) -> None:
        self._pending[seq].end = self.timer.mark(stream)

    def block_waiting(self, seq: int) -> None:
        """The compute stream reached the block fed by copy ``seq`` (before it waits for the copy)."""
        copy = self._pending.pop(seq, None)
        if copy is None or self._current is None:
            return
        copy.wanted = self.timer.mark()
        self._current.copies.append(copy)

    def block_ready(self, seq: int) -> None:
        """The compute stream passed its wait for copy ``seq``."""
        if self._current is not None and self._current.copies and self._current.copies[-1].seq == seq:
            self._current.copies[-1].got = self.timer.mark()

    def miss(self) -> None:
        if self._current is None:
            self._loose_misses += 1
        else:
            self._current.misses += 1

    def drop_pending(self) -> None:
        """Forget copies that will never be consumed (the pipeline restarted)."""
        self._pending.clear()

    def summary(self) -> PromptStats:
        """Stats of the forwards finished since the last summary. Synchronises the device once."""
        finished, self._finished = self._finished, []
        if not finished:
            return PromptStats(())
        self.timer.sync()
        stats = tuple(self._forward_stats(f) for f in finished)
        for forward in finished:
            self.timer.recycle(_marks(forward))
        return PromptStats(stats)

    def _forward_stats(self, forward: _Forward) -> ForwardStats:
        seconds = self.timer.seconds
        copy_s = sum(seconds(c.start, c.end) for c in forward.copies)
        stall_s = sum(max(0.0, seconds(c.wanted, c.got)) for c in forward.copies)
        timeline = tuple(
            tuple(seconds(forward.start, mark) if mark is not None else float("nan") for mark in (c.start, c.end, c.wanted, c.got))
            for c in forward.copies
        )
        return ForwardStats(
            index=forward.index,
            forward_s=seconds(forward.start, forward.end),
            copy_s=copy_s,
            stall_s=stall_s,
            streamed_bytes=sum(c.nbytes for c in forward.copies),
            copies=len(forward.copies),
            misses=forward.misses,
            synchronous=self.timer.synchronous,
            timeline=timeline,
        )


class NullTelemetry(Telemetry):
    """Telemetry switched off: every hook is a no-op and the summary is empty."""

    def __init__(self) -> None:
        super().__init__(WallTimer())

    def forward_started(self) -> None: ...
    def forward_finished(self) -> None: ...
    def copy_started(self, seq: int, nbytes: int, stream: Any = None) -> None: ...
    def copy_finished(self, seq: int, stream: Any = None) -> None: ...
    def block_waiting(self, seq: int) -> None: ...
    def block_ready(self, seq: int) -> None: ...
    def miss(self) -> None: ...
