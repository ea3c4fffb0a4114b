"""The StreamRequest whose plan streams closest to a target number of bytes.

The node's inputs say how many GB to keep OFF the compute device (`virtual_vram_gb`), not how many to stream:
the staging ring counts against the compute share, so the two differ by about a ring. The benchmark wants a
given number of streamed bytes, so it scans `virtual_vram_gb` and plans each request the way the node does
(`distorch.budget.plan_request` on the model's layout), with the layout computed once. The node also passes
the probed link topology; that only sets the stores' rates (the plan's expected transfer), never which blocks
stream, so the scan leaves it out rather than probe the links before the cases.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from comfyui_distorch.distorch.budget import StreamRequest, plan_request
from comfyui_distorch.distorch.devices import device_total_memory
from comfyui_distorch.distorch.errors import DistorchError
from comfyui_distorch.distorch.layout import layout_model, tensor_bytes
from comfyui_distorch.distorch.planner import PlacementPlan

from .harness import GB

log = logging.getLogger("bench")
CLOSE_ENOUGH = 0.1  # a plan within 10% of the target streamed bytes is on target


@dataclass(frozen=True)
class ChosenPlan:
    request: StreamRequest  # what make_streaming is given
    plan: PlacementPlan  # what that request plans to (streamed/resident bytes, ring, footprint)
    note: str | None  # why the plan is off the target, when it is


def scan_points(total_gb: float) -> Iterator[float]:
    """`virtual_vram_gb` values from one step up to the whole model: ~1000 steps, at least 5 MB apart."""
    step = max(total_gb / 1000, 0.005)
    v = step
    while v <= total_gb + step:
        yield round(v, 3)
        v += step


def choose(model: torch.nn.Module, device: str, target_bytes: float, ring_slots: int,
           keep_head_blocks: int) -> ChosenPlan:
    """The request (cpu donor) whose plan streams closest to `target_bytes`; requests the planner refuses
    (budget too small for the non-block modules, head blocks and ring) are skipped."""
    layout = layout_model(model)
    blocks, other = layout.block_sizes, layout.other_bytes
    total_gb = tensor_bytes(list(model.parameters()) + list(model.buffers())) / GB
    best: tuple[float, StreamRequest, PlacementPlan] | None = None
    refused: dict[str, str] = {}
    for v in scan_points(total_gb):
        request = StreamRequest(compute_device=device, virtual_vram_gb=v, donor_device="cpu",
                                ring_slots=ring_slots, keep_head_blocks=keep_head_blocks)
        try:
            plan = plan_request(request, blocks, other, device_total_memory)
        except DistorchError as exc:
            refused.setdefault(type(exc).__name__, f"virtual_vram_gb={v}: {exc}"[:300])
            continue
        err = abs(plan.streamed_bytes - target_bytes)
        if plan.streamed_bytes > 0 and (best is None or err < best[0]):
            best = (err, request, plan)
    if best is None:
        raise RuntimeError(f"no virtual_vram_gb streams anything (ring_slots={ring_slots}, "
                           f"keep_head_blocks={keep_head_blocks}); planner refusals: {refused}")
    err, request, plan = best
    return ChosenPlan(request, plan, off_target_note(plan, target_bytes, err))


def off_target_note(plan: PlacementPlan, target_bytes: float, err: float) -> str | None:
    """None on target; else what was streamed instead (tiny models: blocks are few and large)."""
    if err <= CLOSE_ENOUGH * target_bytes:
        return None
    note = (f"no virtual_vram_gb streams within {CLOSE_ENOUGH:.0%} of {target_bytes / GB:.2f} GB; "
            f"the closest plan streams {plan.streamed_bytes / GB:.2f} GB")
    log.warning("%s", note)
    return note


def label(streamed_bytes: float) -> str:
    """The size part of a case name: `13gb`, or `0.30gb` below 1 GB."""
    return f"{streamed_bytes / GB:.0f}gb" if streamed_bytes >= GB else f"{streamed_bytes / GB:.2f}gb"


def summary(plan: PlacementPlan) -> dict[str, Any]:
    """The `plan` field of a DisTorch case."""
    return {"resident_blocks": len(plan.resident), "streamed_blocks": len(plan.streamed),
            "ring_slots": plan.ring_slots, "slot_bytes": plan.slot_bytes,
            "device_footprint_bytes": plan.device_footprint_bytes,
            "streamed": [name for name, _ in plan.streamed]}
