"""Shared helpers for streaming tests: reference outputs and engines for given plans."""
from __future__ import annotations

import torch

from distorch.engine import EngineOptions, StreamingEngine
from distorch.layout import layout_model
from distorch.planner import PlacementPlan, StoreBudget, spread_evenly
from toy_models import make_input, make_model


def reference_outputs(dtype: torch.dtype, inputs: list[torch.Tensor], **sizes: int) -> list[torch.Tensor]:
    model = make_model(dtype, **sizes)
    with torch.no_grad():
        return [model(x) for x in inputs]


def plan_streaming(model, count: int, ring_slots: int = 3, keep_head_blocks: int = 1) -> PlacementPlan:
    """A plan streaming exactly ``count`` blocks spread evenly after the head (whatever the budget)."""
    layout = layout_model(model)
    sizes = layout.block_sizes
    candidates = list(range(keep_head_blocks, len(sizes)))
    chosen = [candidates[i] for i in spread_evenly(count, len(candidates))] if count else []
    streamed = [sizes[i] for i in chosen]
    return PlacementPlan(
        compute_device="cpu",
        resident=tuple(name for i, (name, _) in enumerate(sizes) if i not in chosen),
        streamed=tuple((name, "cpu") for name, _ in streamed),
        ring_slots=min(ring_slots, count),
        slot_bytes=max((n for _, n in streamed), default=0),
        resident_bytes=layout.total_bytes - sum(n for _, n in streamed),
        streamed_bytes=sum(n for _, n in streamed),
        other_bytes=layout.other_bytes,
        activation_reserve_bytes=0,
        block_sizes=tuple(sizes),
        stores=(StoreBudget("cpu"),),
    )


def loaded_engine(model, count: int, ring_slots: int = 3, keep_head_blocks: int = 1, **options) -> StreamingEngine:
    plan = plan_streaming(model, count, ring_slots, keep_head_blocks)
    engine = StreamingEngine(model, plan, EngineOptions(ring_slots=ring_slots, **options))
    engine.load("cpu")
    return engine


def inputs(dtype: torch.dtype, count: int = 3) -> list[torch.Tensor]:
    return [make_input(dtype, seed=seed) for seed in range(count)]
