"""Which blocks stay on the compute device and which stream in from a store, and from which store.

Placement matters as much as overlap (engine.md): with streamed blocks spread evenly through the
execution order and a look-ahead of a few blocks, a forward costs about max(compute, bytes / bandwidth);
with the streamed blocks bunched at the tail, nothing moves while the head computes. So the planner
streams the FEWEST blocks that fit the budget, picks them evenly spaced in execution order (by block
index, whatever their sizes, so the gap between two streamed blocks never differs by more than one
block), and interleaves stores along the order in proportion to bandwidth so several links stay busy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .errors import BudgetError

GB = 1e9


@dataclass(frozen=True)
class StoreBudget:
    """A device that holds streamed blocks: ``capacity_bytes=None`` means unlimited."""

    device: str
    capacity_bytes: int | None = None
    bandwidth_gbps: float | None = None  # to the compute device; None = not measured


@dataclass(frozen=True)
class PlacementPlan:
    compute_device: str
    resident: tuple[str, ...]  # block names kept on the compute device
    streamed: tuple[tuple[str, str], ...]  # (block name, store device) in execution order
    ring_slots: int
    slot_bytes: int
    resident_bytes: int  # resident blocks + other (non-block) bytes
    streamed_bytes: int
    other_bytes: int
    activation_reserve_bytes: int
    block_sizes: tuple[tuple[str, int], ...] = ()  # every block's bytes, in execution order
    stores: tuple[StoreBudget, ...] = field(default=())

    @property
    def ring_bytes(self) -> int:
        return self.ring_slots * self.slot_bytes

    @property
    def device_footprint_bytes(self) -> int:
        """Weight bytes on the compute device while loaded: resident tensors plus the staging ring."""
        return self.resident_bytes + self.ring_bytes

    @property
    def streamed_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.streamed)

    def bytes_by_store(self) -> dict[str, int]:
        """Streamed bytes each store holds."""
        sizes = dict(self.block_sizes)
        held: dict[str, int] = {}
        for name, store in self.streamed:
            held[store] = held.get(store, 0) + sizes.get(name, 0)
        return held

    def bytes_by_device(self) -> dict[str, int]:
        """Weight bytes each device holds (activation reserve excluded). A CPU compute device streaming
        from a CPU arena holds both its footprint and the arena."""
        held = {self.compute_device: self.device_footprint_bytes}
        for store, nbytes in self.bytes_by_store().items():
            held[store] = held.get(store, 0) + nbytes
        return held

    def transfer_seconds(self) -> dict[str, float]:
        """Expected per-forward transfer time per store whose bandwidth is known."""
        bandwidth = {s.device: s.bandwidth_gbps for s in self.stores if s.bandwidth_gbps}
        held = self.bytes_by_store()
        return {dev: held[dev] / (bandwidth[dev] * GB) for dev in bandwidth if dev in held}

    def table(self) -> str:
        """An aligned text table: device | role | blocks | bytes, with totals and transfer time."""
        counts: dict[str, int] = {}
        for _, store in self.streamed:
            counts[store] = counts.get(store, 0) + 1
        held = self.bytes_by_store()
        seconds = self.transfer_seconds()
        rows = [("device", "role", "blocks", "bytes", "transfer/forward")]
        ring = f" + ring {self.ring_slots}x{_gb(self.slot_bytes)}" if self.ring_slots else ""
        rows.append((self.compute_device, "compute" + ring, str(len(self.resident)), _gb(self.device_footprint_bytes), ""))
        for store, count in counts.items():
            time = f"{seconds[store] * 1000:.0f} ms" if store in seconds else "?"
            rows.append((store, "store", str(count), _gb(held[store]), time))
        total_blocks = str(len(self.resident) + len(self.streamed))
        rows.append(("total", "", total_blocks, _gb(self.resident_bytes + self.streamed_bytes), ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if seconds:
            # Host and PCIe-peer copies share the compute GPU's x16 link; only NVLink adds bandwidth.
            lines.append(
                f"expected transfer per forward: {max(seconds.values()) * 1000:.0f} ms on independent links, "
                f"{sum(seconds.values()) * 1000:.0f} ms on one shared link"
            )
        return "\n".join(lines)


def _gb(nbytes: int) -> str:
    """Human-readable size for the table (decimal units, like the bandwidths)."""
    for unit, scale in (("GB", GB), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"


def spread_evenly(count: int, total: int) -> list[int]:
    """``count`` indices out of ``range(total)``, evenly spaced (gaps differ by at most one)."""
    return [((2 * i + 1) * total) // (2 * count) for i in range(count)]


def _needed_bytes(sizes: Sequence[int], streamed: Sequence[int], fixed: int, ring_slots: int) -> tuple[int, int, int]:
    """(budget needed, slot bytes, ring slots) when the blocks at ``streamed`` indices stream."""
    slot_bytes = max((sizes[i] for i in streamed), default=0)
    slots = min(ring_slots, len(streamed))
    resident = fixed + sum(sizes) - sum(sizes[i] for i in streamed)
    return resident + slots * slot_bytes, slot_bytes, slots


def plan_placement(
    blocks: Sequence[tuple[str, int]],
    other_bytes: int,
    compute_device: str,
    weight_budget_bytes: int,
    stores: Sequence[StoreBudget],
    ring_slots: int = 3,
    keep_head_blocks: int = 1,
    activation_reserve_bytes: int = 0,
) -> PlacementPlan:
    """Stream the fewest blocks, spread evenly, so that resident + ring + reserve <= budget."""
    if ring_slots < 1:
        raise ValueError(f"ring_slots must be at least 1, got {ring_slots}")
    names = [name for name, _ in blocks]
    sizes = [nbytes for _, nbytes in blocks]
    head = min(max(keep_head_blocks, 0), len(blocks))
    candidates = list(range(head, len(blocks)))
    fixed = other_bytes + activation_reserve_bytes

    chosen: list[int] = []
    needed, slot_bytes, slots = _needed_bytes(sizes, chosen, fixed, ring_slots)
    lowest = needed
    for count in range(1, len(candidates) + 1):
        if needed <= weight_budget_bytes:
            break
        chosen = [candidates[i] for i in spread_evenly(count, len(candidates))]
        needed, slot_bytes, slots = _needed_bytes(sizes, chosen, fixed, ring_slots)
        lowest = min(lowest, needed)
    if needed > weight_budget_bytes:
        raise BudgetError(
            f"weight budget {weight_budget_bytes} bytes on {compute_device} cannot hold non-block modules "
            f"({other_bytes} bytes) + {head} head block(s) + activation reserve ({activation_reserve_bytes} bytes) "
            f"+ a ring of {ring_slots} staging slot(s); the minimum budget is {lowest} bytes",
            device=compute_device,
        )

    streamed_set = set(chosen)
    stores_of = assign_stores([(names[i], sizes[i]) for i in chosen], stores)
    return PlacementPlan(
        compute_device=compute_device,
        resident=tuple(names[i] for i in range(len(blocks)) if i not in streamed_set),
        streamed=tuple(zip((names[i] for i in chosen), stores_of)),
        ring_slots=slots,
        slot_bytes=slot_bytes,
        resident_bytes=other_bytes + sum(s for i, s in enumerate(sizes) if i not in streamed_set),
        streamed_bytes=sum(sizes[i] for i in chosen),
        other_bytes=other_bytes,
        activation_reserve_bytes=activation_reserve_bytes,
        block_sizes=tuple(blocks),
        stores=tuple(stores),
    )


def assign_stores(streamed: Sequence[tuple[str, int]], stores: Sequence[StoreBudget]) -> list[str]:
    """A store per streamed block, in execution order, respecting capacities.

    Each block goes to the store with room that would have the smallest ``bytes / bandwidth`` after
    taking it: stores fill in proportion to bandwidth AND alternate along the execution order, so
    consecutive streamed blocks come over different links at the same time. Unknown bandwidths
    count as equal.
    """
    if streamed and not stores:
        raise BudgetError(f"{len(streamed)} block(s) must stream but no store was given")
    weights = [s.bandwidth_gbps or 1.0 for s in stores]
    assigned = [0] * len(stores)
    result = []
    for name, nbytes in streamed:
        room = [i for i, s in enumerate(stores) if s.capacity_bytes is None or assigned[i] + nbytes <= s.capacity_bytes]
        if not room:
            free = {s.device: (s.capacity_bytes or 0) - assigned[i] for i, s in enumerate(stores)}
            raise BudgetError(
                f"no store can hold block {name!r} ({nbytes} bytes); "
                f"room left per store: {free}; streamed total {sum(n for _, n in streamed)} bytes"
            )
        best = min(room, key=lambda i: ((assigned[i] + nbytes) / weights[i], i))
        assigned[best] += nbytes
        result.append(stores[best].device)
    return result
