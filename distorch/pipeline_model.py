"""How long a forward takes with a given plan: the streamer's pipeline replayed with measured times.

``max(compute, streamed bytes / bandwidth)`` is what a step would cost with unlimited staging. The streamer has
R slots (distorch.schedule): a fill is copied only once the fill that used its slot before has run to its end,
and the link moves one copy at a time. Where a stretch of blocks carries more bytes than its compute hides
(Flux's double blocks at batch 2) and the next stretch fewer (its single blocks), compute waits in the first and
the link idles in the second, and with R slots the link can carry only R slots' worth of the idle stretch's
time over into the next forward. This model replays exactly that, forward after forward until the pipeline is
in its steady state: per block its compute (measured, distorch.profile) and, when streamed, its copy (bytes /
bandwidth); the compute outside the blocks (the sampler's, the model's input and output layers) runs between
two forwards. Nothing in it is tuned: a measured step well above it is time lost somewhere the model does not
know, and where the measured step matches it while max(compute, transfer) is far below, the plan's structure is
the limit (bench/pipeline_search.py asks it about other plans of the same VRAM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .schedule import SlotSchedule


@dataclass(frozen=True)
class PipelineEstimate:
    forward_s: float  # one steady-state forward, the compute outside the blocks included
    compute_s: float  # every block's compute plus the compute outside them
    transfer_s: float  # streamed bytes / bandwidth
    compute_wait_s: float  # steady state: compute waiting for copies
    link_idle_s: float  # steady state: the link waiting for free slots


def simulate_forward(block_seconds: Sequence[float], streamed_bytes: Sequence[int], slot_bytes: int,
                     ring_slots: int, bandwidth_bytes_per_s: float, other_seconds: float = 0.0,
                     forwards: int = 6) -> PipelineEstimate:
    """``streamed_bytes[i]`` is block i's copy in bytes, 0 when it is resident; blocks in execution order."""
    if len(block_seconds) != len(streamed_bytes):
        raise ValueError("one compute time and one streamed size per block")
    compute = sum(block_seconds) + other_seconds
    order = [i for i, size in enumerate(streamed_bytes) if size > 0]
    if not order:
        return PipelineEstimate(compute, compute, 0.0, 0.0, 0.0)
    schedule = SlotSchedule.build([streamed_bytes[i] for i in order], slot_bytes, ring_slots)
    copy_s = [streamed_bytes[i] / bandwidth_bytes_per_s for i in order]
    run = _Replay(schedule, copy_s, forwards)
    starts = []
    clock = 0.0
    for forward in range(forwards):
        starts.append(clock)
        k = 0
        for i, seconds in enumerate(block_seconds):
            if streamed_bytes[i] > 0:
                clock = run.compute_block(forward * len(order) + k, clock, seconds)
                k += 1
            else:
                clock += seconds
        clock += other_seconds
    starts.append(clock)
    forward_s = starts[-1] - starts[-2]
    transfer = sum(copy_s)
    return PipelineEstimate(forward_s, compute, transfer, max(forward_s - compute, 0.0),
                            max(forward_s - transfer, 0.0))


class _Replay:
    """The copy side: fills in order over one serial link, each after its slot's previous fill ran to its end."""

    def __init__(self, schedule: SlotSchedule, copy_s: Sequence[float], forwards: int) -> None:
        self.schedule, self.copy_s = schedule, copy_s
        self.fills = forwards * schedule.fills
        self.fill_done: dict[int, float] = {}  # fill number -> when its last block finished computing
        self.ready: dict[int, float] = {}  # block run number -> when its copy landed
        self.next_fill = 0
        self.link_free = 0.0
        self.blocks_of: dict[int, list[int]] = {}
        for seq in range(forwards * schedule.blocks):
            self.blocks_of.setdefault(schedule.fill_seq(seq), []).append(seq)

    def _issue(self) -> None:
        while self.next_fill < self.fills:
            before = self.next_fill - self.schedule.slots
            if before >= 0 and before not in self.fill_done:
                return  # its slot is still in use
            start = max(self.link_free, self.fill_done.get(before, 0.0))
            for seq in self.blocks_of[self.next_fill]:
                start += self.copy_s[seq % self.schedule.blocks]
                self.ready[seq] = start
            self.link_free = start
            self.next_fill += 1

    def compute_block(self, seq: int, clock: float, seconds: float) -> float:
        self._issue()
        end = max(clock, self.ready[seq]) + seconds
        fill = self.schedule.fill_seq(seq)
        if seq == self.schedule.last_seq_of_fill(fill):
            self.fill_done[fill] = end
        return end
