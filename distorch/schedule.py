"""Which staging slot, and where in it, each streamed block is copied to: the ring's schedule.

The ring has ``R`` slots of ``slot_bytes`` (the largest streamed block). Consecutive streamed blocks that fit
together in one slot share it as one *fill* (two Flux single blocks fit a slot sized for a double block), so
small blocks get a deeper look-ahead for the same VRAM. Fills rotate round-robin over the slots: fill number
``g`` (counted across forwards; a forward has ``F`` fills) lands in slot ``g % R``. A fill may be copied once
the fill that last used its slot has run to its end, i.e. fill ``g - R`` finished. With one block per fill
this is exactly a ring of R block slots.

Everything here is static per plan, so the slot and offset of a block are the same every step (its typed views
are cached, and the same bytes land in the same place each forward).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence


@dataclass(frozen=True)
class SlotSchedule:
    block_bytes: tuple[int, ...]  # streamed blocks in execution order (padded sizes)
    slot_bytes: int
    ring_slots: int  # R as configured; the schedule uses min(R, fills per forward)
    fill_of: tuple[int, ...]  # block index -> fill index inside a forward
    offset_of: tuple[int, ...]  # block index -> byte offset inside its slot
    fill_last_block: tuple[int, ...]  # fill index -> its last block index
    position_of: tuple[int, ...]  # block index -> which of its fill's blocks it is (0 for the first)

    @classmethod
    def build(cls, block_bytes: Sequence[int], slot_bytes: int, ring_slots: int, pack: bool = True) -> "SlotSchedule":
        """Greedy packing in execution order: a block starts a new fill when it does not fit what is left of the
        current one (or always, with ``pack=False``)."""
        if any(size > slot_bytes for size in block_bytes):
            raise ValueError(f"a block of {max(block_bytes)} bytes does not fit a {slot_bytes}-byte slot")
        fill_of, offset_of, position_of, last = [], [], [], []
        used = slot_bytes  # forces a new fill for the first block
        for index, size in enumerate(block_bytes):
            if not pack or used + size > slot_bytes:
                last.append(index)
                used = 0
                position = 0
            fill_of.append(len(last) - 1)
            offset_of.append(used)
            position_of.append(position)
            position += 1
            last[-1] = index
            used += size
        return cls(tuple(block_bytes), slot_bytes, ring_slots, tuple(fill_of), tuple(offset_of), tuple(last),
                   tuple(position_of))

    @property
    def blocks(self) -> int:
        return len(self.block_bytes)

    @property
    def fills(self) -> int:
        return len(self.fill_last_block)

    # Read for every block of every forward (the streamer's hooks): computed once.
    @cached_property
    def slots(self) -> int:
        """Slots in use: more slots than fills would copy a fill twice ahead."""
        return min(self.ring_slots, self.fills)

    @cached_property
    def positions(self) -> int:
        """The most blocks one fill holds (ready events are kept per slot and position)."""
        return max(self.position_of, default=0) + 1

    def fill_seq(self, seq: int) -> int:
        """The fill number of block run number ``seq`` (``seq = forward * blocks + index``)."""
        return (seq // self.blocks) * self.fills + self.fill_of[seq % self.blocks]

    def slot(self, seq: int) -> int:
        return self.fill_seq(seq) % self.slots

    def offset(self, seq: int) -> int:
        return self.offset_of[seq % self.blocks]

    def position(self, seq: int) -> int:
        """Which of its fill's blocks ``seq`` is (0 for the first)."""
        return self.position_of[seq % self.blocks]

    def ready_key(self, seq: int) -> int:
        return self.slot(seq) * self.positions + self.position(seq)

    def last_seq_of_fill(self, fill_seq: int) -> int:
        """The run number of the last block of fill number ``fill_seq``."""
        forward, fill = divmod(fill_seq, self.fills)
        return forward * self.blocks + self.fill_last_block[fill]

    def may_copy(self, seq: int, next_run: int) -> bool:
        """Whether block run ``seq`` may be copied when every run below ``next_run`` has been enqueued: the fill
        that used its slot before must have run to its end (its ``free`` record is then the one that counts)."""
        earlier = self.fill_seq(seq) - self.slots
        return earlier < 0 or self.last_seq_of_fill(earlier) < next_run
