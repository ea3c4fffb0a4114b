"""Which blocks stay on the compute device and which stream in from a store, and from which store.

Placement matters as much as overlap (engine.md): with streamed bytes following compute time through the
execution order and a look-ahead of a few blocks, a forward costs about max(compute, bytes / bandwidth);
with the streamed blocks bunched at the tail, nothing moves while the head computes. So the planner streams
the fewest bytes that fit the budget, *paced*: walking the execution order, the bytes streamed so far stay
within the share of compute time run so far. Compute per block comes from a measured forward when there is
one; before that, every block is taken to cost the same (the blocks of a diffusion transformer run the same
tokens through the same width: Flux's double blocks carry 2.4x the bytes of a single block for ~1.2x its
compute). Where the link is the bottleneck anyway, pacing gains nothing and only its coarser byte steps
would cost: an unmeasured plan then takes the even spread by block index when that streams fewer bytes by
more than one smallest block. Stores are interleaved along the order in proportion to bandwidth so several
links stay busy.
Bandwidth is counted per path *group* (the bottleneck a path goes through, see distorch.topology): streamed
bytes split across independent groups in proportion to their rates; stores sharing a group split its bytes
but never add to its rate. The expected transfer per forward is the slowest group's bytes / rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from .errors import BudgetError

GB = 1e9
MEASURED, EQUAL_COMPUTE, BY_INDEX = "measured", "equal compute", "index"
MAX_PACED_TARGETS = 512


@dataclass(frozen=True)
class StoreBudget:
    """A device that holds streamed blocks: ``capacity_bytes=None`` means unlimited."""

    device: str
    capacity_bytes: int | None = None
    bandwidth_gbps: float | None = None  # to the compute device, this path alone; None = not measured
    # The bottleneck the path goes through (distorch.topology): stores of one group share its bandwidth, and
    # ``group_gbps`` is the group's rate when they are used together. None: the store is a group of its own.
    group: str | None = None
    group_gbps: float | None = None

    @property
    def path_group(self) -> str:
        return self.group or f"store:{self.device}"


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
    # The weight budget asked for when it was below the smallest plan that runs (the plan is that smallest
    # plan instead); None when the budget was met.
    raised_from_bytes: int | None = None
    # How the streamed blocks were chosen: "measured" (paced by a measured forward's compute per block),
    # "equal compute" (paced by bytes, every block taken to cost the same) or "index" (spread evenly by index).
    pacing: str = "index"

    @property
    def paced(self) -> bool:
        """Streamed bytes follow MEASURED compute time."""
        return self.pacing == MEASURED

    def pacing_description(self) -> str:
        return {MEASURED: "paced by measured compute", EQUAL_COMPUTE: "paced by bytes (equal compute per block "
                "until a forward is measured)"}.get(self.pacing, "spread evenly by block index")

    @property
    def budget_raised(self) -> bool:
        return self.raised_from_bytes is not None

    def raised_message(self) -> str:
        """What a user is told when their budget was raised to the minimum (empty when it was not)."""
        if self.raised_from_bytes is None:
            return ""
        needed = self.device_footprint_bytes + self.activation_reserve_bytes
        return (f"weight budget {_gb(self.raised_from_bytes)} on {self.compute_device} is below the minimum "
                f"{_gb(needed)} (non-block modules {_gb(self.other_bytes)} + {len(self.resident)} resident "
                f"block(s) + staging ring {self.ring_slots}x{_gb(self.slot_bytes)}"
                + (f" + activation reserve {_gb(self.activation_reserve_bytes)}" if self.activation_reserve_bytes else "")
                + "); running with the minimum")

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

    def group_bytes(self) -> dict[str, int]:
        """Streamed bytes per bottleneck group."""
        group = {st.device: st.path_group for st in self.stores}
        held: dict[str, int] = {}
        for store, nbytes in self.bytes_by_store().items():
            g = group.get(store, f"store:{store}")
            held[g] = held.get(g, 0) + nbytes
        return held

    def transfer_seconds(self) -> dict[str, float]:
        """Per store whose group's rate is known: its bytes at the group's rate (the stores of one group add up)."""
        rates = group_rates(self.stores)
        held = self.bytes_by_store()
        return {s.device: held[s.device] / (rates[s.path_group] * GB)
                for s in self.stores if s.device in held and rates.get(s.path_group)}

    def group_seconds(self) -> dict[str, float]:
        """Per group: its bytes at its rate, and never less than any one store's bytes at that path's own rate."""
        rates = group_rates(self.stores)
        held = self.bytes_by_store()
        seconds: dict[str, float] = {}
        for group, nbytes in self.group_bytes().items():
            if not rates.get(group):
                continue
            alone = [held.get(s.device, 0) / (s.bandwidth_gbps * GB)
                     for s in self.stores if s.path_group == group and s.bandwidth_gbps]
            seconds[group] = max([nbytes / (rates[group] * GB), *alone])
        return seconds

    def expected_transfer_seconds(self) -> float | None:
        """Per-forward transfer time when every store is in a known group with a known rate: the slowest group
        (independent groups copy at the same time); None when some rate is unknown."""
        groups = self.group_bytes()
        seconds = self.group_seconds()
        if not groups or any(g not in seconds for g in groups):
            return None
        return max(seconds.values())

    def table(self) -> str:
        """An aligned text table: device | role | blocks | bytes | path | transfer, then one line per shared
        path group and the expected transfer time per forward."""
        counts: dict[str, int] = {}
        for _, store in self.streamed:
            counts[store] = counts.get(store, 0) + 1
        held = self.bytes_by_store()
        seconds = self.transfer_seconds()
        group_of = {s.device: s.path_group for s in self.stores}
        grouped = all(s.group for s in self.stores if s.device in counts)
        rows = [("device", "role", "blocks", "bytes", "path", "transfer/forward")]
        ring = f" + ring {self.ring_slots}x{_gb(self.slot_bytes)}" if self.ring_slots else ""
        rows.append((self.compute_device, "compute" + ring, str(len(self.resident)), _gb(self.device_footprint_bytes), "", ""))
        for store, count in counts.items():
            time = f"{seconds[store] * 1000:.0f} ms" if store in seconds else "?"
            path = group_of.get(store, "") if grouped else ""
            rows.append((store, "store", str(count), _gb(held[store]), path, time))
        total_blocks = str(len(self.resident) + len(self.streamed))
        rows.append(("total", "", total_blocks, _gb(self.resident_bytes + self.streamed_bytes), "", ""))
        if not grouped:  # without a probed topology there is no path to show
            rows = [row[:4] + row[5:] for row in rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if grouped:
            rates, group_secs = group_rates(self.stores), self.group_seconds()
            for group, nbytes in self.group_bytes().items():
                members = [d for d in counts if group_of.get(d) == group]
                if len(members) > 1 and group in group_secs:
                    lines.append(f"path {group} is shared by {' + '.join(members)}: {_gb(nbytes)} at "
                                 f"{rates[group]:.1f} GB/s = {group_secs[group] * 1000:.0f} ms")
            expected = self.expected_transfer_seconds()
            if expected is not None:
                independent = len(self.group_bytes())
                lines.append(f"expected transfer per forward: {expected * 1000:.0f} ms (slowest of {independent} "
                             f"independent path(s); a step takes at least max(compute, this))")
        elif seconds:
            # Without a probed topology it is unknown whether the stores' links are independent (NVLink) or
            # share the compute GPU's x16 link (host and PCIe peer copies): show both bounds.
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
    block_seconds: Sequence[float] | None = None,
) -> PlacementPlan:
    """Stream the fewest bytes so that resident + ring + reserve <= budget, paced so that streamed bytes follow
    compute time (see :func:`paced_choice`): each block's measured compute time (``block_seconds``, from an
    earlier forward), else equal compute per block (or the even spread by index, see the module docstring)."""
    if ring_slots < 1:
        raise ValueError(f"ring_slots must be at least 1, got {ring_slots}")
    names = [name for name, _ in blocks]
    sizes = [nbytes for _, nbytes in blocks]
    head = _head_count(keep_head_blocks, len(blocks))
    fixed = other_bytes + activation_reserve_bytes
    costs = list(block_seconds) if block_seconds is not None and len(block_seconds) == len(blocks) else None

    raised_from = None
    pacing = MEASURED if costs is not None else EQUAL_COMPUTE
    fitting = _first_fitting(sizes, head, fixed, ring_slots, weight_budget_bytes, costs or [1.0] * len(sizes))
    if costs is None:
        even = _first_fitting(sizes, head, fixed, ring_slots, weight_budget_bytes)
        if even is not None and (fitting is None or _bytes_of(sizes, fitting[1]) > _bytes_of(sizes, even[1])
                                 + min(sizes[head:] or [0])):
            fitting, pacing = even, BY_INDEX
    if fitting is None:
        # Never refused for being small: the smallest plan that runs is used instead, and the caller warns with
        # both numbers (plan.raised_message()).
        fitting = min(((_needed_bytes(sizes, chosen, fixed, ring_slots), chosen)
                       for chosen in _fallback_choices(len(blocks), head)), key=lambda option: option[0][0])
        raised_from, pacing = weight_budget_bytes, BY_INDEX
    (needed, slot_bytes, slots), chosen = fitting

    streamed_set = set(chosen)
    stores_of = assign_stores([(names[i], sizes[i]) for i in chosen], stores)
    return PlacementPlan(
        compute_device=compute_device,
        resident=tuple(names[i] for i in range(len(blocks)) if i not in streamed_set),
        streamed=tuple(zip((names[i] for i in chosen), stores_of)),
        ring_slots=slots,
        slot_bytes=slot_bytes,
        resident_bytes=other_bytes + sum(s for i, s in enumerate(sizes) if i not in streamed_set),
        streamed_bytes=_bytes_of(sizes, chosen),
        other_bytes=other_bytes,
        activation_reserve_bytes=activation_reserve_bytes,
        block_sizes=tuple(blocks),
        stores=tuple(stores),
        raised_from_bytes=raised_from,
        pacing=pacing,
    )


def _bytes_of(sizes: Sequence[int], chosen: Sequence[int]) -> int:
    return sum(sizes[i] for i in chosen)


def _head_count(keep_head_blocks: int, block_count: int) -> int:
    return min(max(keep_head_blocks, 0), block_count)


def _streamed_choices(block_count: int, head: int) -> Iterator[list[int]]:
    """The streamed block indices the planner tries, fewest first: none, then 1, 2, ... spread evenly."""
    candidates = list(range(head, block_count))
    for count in range(len(candidates) + 1):
        yield [candidates[i] for i in spread_evenly(count, len(candidates))]


def _fallback_choices(block_count: int, head: int) -> Iterator[list[int]]:
    """Every choice the planner may make: keeping the head block(s) resident, then streaming them too."""
    for pool_head in dict.fromkeys((head, 0)):
        yield from _streamed_choices(block_count, pool_head)


def paced_choice(sizes: Sequence[int], seconds: Sequence[float], head: int, target_bytes: int,
                 slack: float = 0.02) -> list[int]:
    """About ``target_bytes`` of blocks to stream, chosen so that streamed bytes follow compute time: walking the
    execution order, a block streams while the bytes streamed so far stay within the share of compute time run
    so far (plus ``slack``). Copies then always have compute to hide under; an even spread by block index
    over-streams where blocks carry many bytes for their compute (Flux's double blocks: ~2.4x the bytes of a
    single block for ~1.2x its compute) and leaves the link idle where they carry few."""
    total = sum(seconds) or 1.0
    chosen, streamed, elapsed = [], 0, 0.0
    for index, (size, cost) in enumerate(zip(sizes, seconds)):
        elapsed += cost
        if index < head or streamed >= target_bytes:
            continue
        if (streamed + size) / max(target_bytes, 1) <= elapsed / total + slack:
            chosen.append(index)
            streamed += size
    # Near the whole model the pace cannot be kept (the early blocks alone carry more than their share of the
    # bytes): the target is still met, with the latest blocks left, where the most compute has run before
    # them. The link is then the bottleneck wherever the blocks stream from; streaming MORE than the target
    # to keep a pace would only make every step slower.
    paced = set(chosen)
    for index in range(len(sizes) - 1, head - 1, -1):
        if streamed >= target_bytes:
            break
        if index not in paced:
            chosen.append(index)
            streamed += sizes[index]
    return sorted(chosen)


def _paced_choices(sizes: Sequence[int], seconds: Sequence[float], head: int) -> Iterator[list[int]]:
    """Paced streamed sets for growing byte targets, a smallest block apart (fewest bytes first), at most
    ``MAX_PACED_TARGETS`` of them (a UNet's smallest block is a few kB: the planner stays a few ms)."""
    candidates = sizes[head:]
    if not candidates:
        yield []
        return
    total = sum(candidates)
    step = max(min(candidates), total // MAX_PACED_TARGETS, 1)
    for target in range(0, total + step, step):
        yield paced_choice(sizes, seconds, head, target)
    yield list(range(head, len(sizes)))


def _first_fitting(sizes: Sequence[int], head: int, fixed: int, ring_slots: int, budget: int,
                   costs: Sequence[float] | None = None) -> tuple[tuple[int, int, int], list[int]] | None:
    """The fewest streamed blocks (fewest bytes, when paced by ``costs``) whose plan fits ``budget``, keeping the
    head resident when any such plan exists, else streaming it too; None when no plan fits."""
    for pool_head in dict.fromkeys((head, 0)):
        choices = _streamed_choices(len(sizes), pool_head) if costs is None else _paced_choices(sizes, costs, pool_head)
        for chosen in choices:
            needed = _needed_bytes(sizes, chosen, fixed, ring_slots)
            if needed[0] <= budget:
                return needed, chosen
    return None


def minimum_weight_budget(blocks: Sequence[tuple[str, int]], other_bytes: int, ring_slots: int = 3,
                          keep_head_blocks: int = 1, activation_reserve_bytes: int = 0) -> int:
    """The smallest weight budget :func:`plan_placement` meets: below it, the plan is this minimum plan and says
    its budget was raised (same ring and head arguments)."""
    sizes = [nbytes for _, nbytes in blocks]
    fixed = other_bytes + activation_reserve_bytes
    return min(_needed_bytes(sizes, chosen, fixed, ring_slots)[0]
               for chosen in _fallback_choices(len(sizes), _head_count(keep_head_blocks, len(sizes))))


def group_rates(stores: Sequence[StoreBudget]) -> dict[str, float | None]:
    """Each path group's bandwidth: the measured rate of the group used together (``group_gbps``), else its
    fastest single path, else None (unknown). Paths inside one group are never summed."""
    rates: dict[str, float | None] = {}
    for group in dict.fromkeys(s.path_group for s in stores):
        members = [s for s in stores if s.path_group == group]
        together = [s.group_gbps for s in members if s.group_gbps]
        alone = [s.bandwidth_gbps for s in members if s.bandwidth_gbps]
        rates[group] = max(together) if together else max(alone) if alone else None
    return rates


def assign_stores(streamed: Sequence[tuple[str, int]], stores: Sequence[StoreBudget]) -> list[str]:
    """A store per streamed block, in execution order, respecting capacities.

    Two levels. Each block goes to the path group with room whose ``bytes / rate`` after taking it is smallest:
    streamed bytes split across independent groups in proportion to their bandwidth, and groups alternate
    along the execution order so they copy at the same time. Inside the group, the same rule over the stores'
    own rates: a shared group's bandwidth is not summed, its stores only split the group's bytes (adding
    capacity). When any rate is unknown, every group (or store) counts as equal. Without groups each store is
    its own group: the single-level interleave by bandwidth.
    """
    if streamed and not stores:
        raise BudgetError(f"{len(streamed)} block(s) must stream but no store was given")
    rates = group_rates(stores)
    known = all(rates.values())
    group_weight = {g: (r if known else 1.0) for g, r in rates.items()}
    members: dict[str, list[int]] = {}
    for i, s in enumerate(stores):
        members.setdefault(s.path_group, []).append(i)
    store_weight = [1.0] * len(stores)
    for indices in members.values():
        if all(stores[i].bandwidth_gbps for i in indices):
            for i in indices:
                store_weight[i] = stores[i].bandwidth_gbps
    order = {g: n for n, g in enumerate(members)}
    assigned = [0] * len(stores)
    in_group = dict.fromkeys(members, 0)
    result = []
    for name, nbytes in streamed:
        room = [i for i, s in enumerate(stores) if s.capacity_bytes is None or assigned[i] + nbytes <= s.capacity_bytes]
        if not room:
            free = {s.device: (s.capacity_bytes or 0) - assigned[i] for i, s in enumerate(stores)}
            raise BudgetError(
                f"no store can hold block {name!r} ({nbytes} bytes); "
                f"room left per store: {free}; streamed total {sum(n for _, n in streamed)} bytes"
            )
        groups = {stores[i].path_group for i in room}
        group = min(groups, key=lambda g: ((in_group[g] + nbytes) / group_weight[g], order[g]))
        best = min((i for i in room if stores[i].path_group == group),
                   key=lambda i: ((assigned[i] + nbytes) / store_weight[i], i))
        assigned[best] += nbytes
        in_group[group] += nbytes
        result.append(stores[best].device)
    return result
