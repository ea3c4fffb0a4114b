"""From what the user asked (auto, virtual VRAM or an expert allocation) to a placement plan.

The compute device's share of the allocation is its weight budget (resident weights + staging ring); every
other device listed becomes a store for streamed blocks (pinned host RAM for `cpu`, VRAM for a donor GPU).
``virtual_vram_gb=None`` is the automatic budget, the default: the plan takes what is really free on the compute
device when the model is loaded for a sampling run, minus the activation memory that run needs
(:func:`plan_auto`), and streams only the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .allocation import Allocation, parse_allocation, virtual_vram_bytes
from .devices import canonical_device, require_device
from .errors import AllocationError
from .planner import BY_INDEX, PlacementPlan, StoreBudget, plan_placement
from .topology import Topology


@dataclass(frozen=True)
class StreamRequest:
    """What a DisTorch loader node was asked for."""

    compute_device: str
    virtual_vram_gb: float | None  # None: automatic (plan_auto at each load for sampling)
    donor_device: str
    expert_allocation: str = ""
    ring_slots: int = 2
    keep_head_blocks: int = 1
    # VRAM a batched cond+uncond forward needs beside the weights; the compute device keeps it free.
    activation_reserve_bytes: int = 0

    @property
    def auto(self) -> bool:
        """The automatic budget: no number and no expert allocation given."""
        return self.virtual_vram_gb is None and not self.expert_allocation.strip()


AUTO = "auto"


def parse_virtual_vram(value: str | float | int | None) -> float | None:
    """The node's ``virtual_vram_gb`` input: ``"auto"`` (or empty) -> None, else GB >= 0 (AllocationError naming
    the bad value otherwise). Numbers from older saved workflows (a float input then) are accepted as they are."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return None
    text = value.strip() if isinstance(value, str) else value
    virtual_vram_bytes(text)  # raises on anything that is not a finite number >= 0
    return float(text)


def require_request_devices(request: StreamRequest, available: Sequence[str] | None = None) -> None:
    """Every device the request names is present (else DeviceError naming the first absent one). Loaders call it
    before they read a file, so a device that is not there costs no multi-GB load thrown away afterwards. The
    donor is checked only without an expert allocation, which then names the stores itself."""
    require_device(request.compute_device, available)
    if request.expert_allocation.strip():
        for entry in parse_allocation(request.expert_allocation).entries:
            require_device(entry.device, available)
    else:
        require_device(request.donor_device, available)


def compute_shares(request: StreamRequest, model_bytes: int, device_total: Callable[[str], int],
                   available: Sequence[str] | None = None) -> tuple[str, int, list[tuple[str, int]]]:
    """``(compute device, its bytes, [(store device, bytes), ...])``; an expert string wins over the
    one-number form."""
    compute = require_device(request.compute_device, available)
    if request.auto:
        raise ValueError("the automatic budget has no fixed shares: plan it with plan_auto")
    if request.expert_allocation.strip():
        allocation = parse_allocation(request.expert_allocation)
    elif compute == canonical_device(request.donor_device) == "cpu":
        # CPU compute streaming from a CPU arena: no speed to gain, but the very same machinery, which is how
        # it is verified on machines without a GPU. The arena is the only store.
        moved = min(virtual_vram_bytes(request.virtual_vram_gb), model_bytes)
        return compute, model_bytes - moved, [("cpu", moved)]
    else:
        allocation = Allocation.from_virtual_vram(compute, request.virtual_vram_gb, request.donor_device, model_bytes)
    devices = [e.device for e in allocation.entries]
    if compute not in devices:
        raise AllocationError(
            "allocation does not list the compute device", token=request.expert_allocation, position=0,
            text=request.expert_allocation, hint=f"start it with '{compute},<bytes>'", what="allocation",
        )
    totals = {d: device_total(require_device(d, available)) for d in devices}
    shares = allocation.resolve(model_bytes, totals)
    return compute, shares[compute], [(d, n) for d, n in shares.items() if d != compute]


def store_budgets(shares: Sequence[tuple[str, int]]) -> list[StoreBudget]:
    """Stores for the non-compute shares. Streaming needs a staging ring inside the compute device's share, so
    slightly more than the other shares must stream: the last store listed (the wildcard or the donor, usually
    cpu) has no cap and absorbs it."""
    last = len(shares) - 1
    return [StoreBudget(device, None if i == last else n, None) for i, (device, n) in enumerate(shares)]


def apply_topology(stores: Sequence[StoreBudget], topology: Topology | None) -> list[StoreBudget]:
    """Each store with the measured rate of its path, its bottleneck group and the group's rate when the
    plan's stores use it together. Stores the topology does not know (not probed) keep unknown rates."""
    if topology is None:
        return list(stores)
    used = [s.device for s in stores]
    result = []
    for store in stores:
        link = topology.links.get(store.device)
        if link is None:
            result.append(store)
            continue
        result.append(replace(store, bandwidth_gbps=link.gbps, group=link.group,
                              group_gbps=topology.group_rate(link.group, used)))
    return result


def plan_request(
    request: StreamRequest,
    blocks: Sequence[tuple[str, int]],
    other_bytes: int,
    device_total: Callable[[str], int],
    available: Sequence[str] | None = None,
    topology: Topology | None = None,
) -> PlacementPlan:
    """Resolve a request against real device sizes and plan the placement. With a ``topology`` (probed for the
    compute device, distorch.topology.probe_topology) streamed bytes are split across independent paths in
    proportion to their bandwidth and the table shows the expected transfer per forward."""
    model_bytes = other_bytes + sum(n for _, n in blocks)
    compute, budget, shares = compute_shares(request, model_bytes, device_total, available)
    if topology is not None and topology.compute != compute:
        raise ValueError(f"topology was probed for {topology.compute}, but the compute device is {compute}")
    # The weights may use the compute device's share, but never the memory the activations need: the plan's
    # footprint (resident + ring) stays within min(share, device total - reserve).
    reserve = request.activation_reserve_bytes if compute != "cpu" else 0
    budget = min(budget + reserve, device_total(compute))
    return plan_placement(
        blocks, other_bytes, compute, budget, apply_topology(store_budgets(shares), topology),
        ring_slots=request.ring_slots, keep_head_blocks=request.keep_head_blocks, activation_reserve_bytes=reserve,
    )


def plan_auto(
    request: StreamRequest,
    blocks: Sequence[tuple[str, int]],
    other_bytes: int,
    free_bytes: int,
    reserve_bytes: int,
    available: Sequence[str] | None = None,
    topology: Topology | None = None,
    block_seconds: Sequence[float] | None = None,
) -> PlacementPlan:
    """The automatic budget: weights may take ``free_bytes`` (what the compute device has free for this model,
    its own current footprint included) minus ``reserve_bytes`` (the activations of the sampling run about to
    happen); every other block streams from the donor, uncapped. Below the smallest plan that runs, that plan
    is used and says so (``plan.budget_raised``). ``block_seconds``: measured compute per block (an earlier
    forward), to pace streamed bytes by compute time instead of spreading them by index."""
    compute = require_device(request.compute_device, available)
    donor = require_device(request.donor_device, available)
    if donor == compute != "cpu":  # cpu/cpu is the CPU-only verification path, as in compute_shares
        raise AllocationError("the donor device must differ from the compute device", token=donor, position=0,
                              text=donor, hint="pick cpu (pinned RAM) or another GPU", what="donor device")
    stores = apply_topology([StoreBudget(donor)], topology)
    return plan_placement(blocks, other_bytes, compute, max(int(free_bytes), 0), stores,
                          ring_slots=request.ring_slots, keep_head_blocks=request.keep_head_blocks,
                          activation_reserve_bytes=max(int(reserve_bytes), 0), block_seconds=block_seconds)


@dataclass(frozen=True)
class ReplanCosts:
    """Measured numbers that price a re-plan of a loaded model against what it saves in the run about to start."""

    forward_compute_s: float  # one forward's compute, every block (a measured forward: distorch.profile)
    forwards: int  # forwards the coming sampling run makes, at least (its steps)
    stream_s_per_byte: float  # packing and page-locking a block that starts to stream (the first load's rate)
    upload_s_per_byte: float  # uploading a block that becomes resident (the first load's rate)


def replan_gain_seconds(current: PlacementPlan, candidate: PlacementPlan, costs: ReplanCosts) -> float | None:
    """Seconds the coming run saves by switching plans now, its cost taken off: each forward costs
    max(compute, transfer) (docs/physical-model.md), moving blocks costs their bytes at the measured rates.
    None when a plan's transfer time is unknown (no measured bandwidth)."""
    before, after = current.expected_transfer_seconds(), candidate.expected_transfer_seconds()
    if before is None and current.streamed:
        return None
    if after is None and candidate.streamed:
        return None
    compute = costs.forward_compute_s
    saved = costs.forwards * (max(compute, before or 0.0) - max(compute, after or 0.0))
    sizes = dict(current.block_sizes)
    was, now = set(current.streamed_names), set(candidate.streamed_names)
    newly_streamed = sum(sizes.get(name, 0) for name in now - was)
    newly_resident = sum(sizes.get(name, 0) for name in was - now)
    return saved - newly_streamed * costs.stream_s_per_byte - newly_resident * costs.upload_s_per_byte


def worth_replanning(current: PlacementPlan, candidate: PlacementPlan, free_bytes: int, model_bytes: int,
                     costs: ReplanCosts | None = None) -> bool:
    """Whether an automatic plan should replace the loaded one (a re-plan moves weights: not for crumbs).

    Yes when the current plan no longer fits what is free (its footprint + reserve over ``free_bytes``). Else,
    with measured ``costs`` and a current plan already paced (by bytes or by measured compute), when the coming
    run saves more than the move costs (:func:`replan_gain_seconds`). Without them: when the candidate is the
    first plan paced by measured compute after an even spread by index, or streams at least min(1 GB, 5% of
    the model) less or more than the current one."""
    if candidate.streamed == current.streamed:
        return False
    if current.device_footprint_bytes + candidate.activation_reserve_bytes > free_bytes and not current.budget_raised:
        return True
    if costs is not None and current.pacing != BY_INDEX:
        gain = replan_gain_seconds(current, candidate, costs)
        if gain is not None:
            return gain > 0
    if candidate.paced and not current.paced:
        return True  # the first plan paced by measured compute: worth one move of weights
    threshold = min(10**9, max(model_bytes // 20, 1))
    return abs(candidate.streamed_bytes - current.streamed_bytes) >= threshold


__all__ = ["AUTO", "StreamRequest", "apply_topology", "compute_shares", "parse_virtual_vram", "plan_auto",
           "plan_request", "replan_gain_seconds", "require_request_devices", "store_budgets", "worth_replanning",
           "ReplanCosts"]
