"""A placement plan that streams exactly the blocks a test names (shared by the streaming and GGUF host tests)."""
from __future__ import annotations

from dataclasses import replace

import torch


def forced_plan(streaming, model, streamed: list[str], ring_slots: int, device: torch.device):
    """A plan streaming exactly ``streamed``: the tiny models are too small for the budget planner to ever prefer
    streaming their few, huge blocks with a resident head block, and the engine must be exact for any plan."""
    plan = streaming.plan_for_module(model.model, streaming.StreamRequest(str(device), 0.0, "cpu"))
    sizes = dict(plan.block_sizes)
    return replace(
        plan, resident=tuple(n for n in plan.resident if n not in streamed),
        streamed=tuple((n, "cpu") for n in streamed), ring_slots=min(ring_slots, len(streamed)),
        slot_bytes=max(sizes[n] for n in streamed), streamed_bytes=sum(sizes[n] for n in streamed),
        resident_bytes=plan.resident_bytes - sum(sizes[n] for n in streamed),
    )
