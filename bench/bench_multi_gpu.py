"""Donor-GPU streaming on a multi-GPU machine: topology, then host / donor / host+donor streaming vs the bound.

Prints one JSON line per case (also appended to ``--out``); never asserts on speed. Cases:
  topology      peer access, host->compute and donor->compute bandwidth alone and at the same time, the
                bottleneck groups the probe decided, the effective bandwidth of host+donor
  resident      all blocks on the compute GPU: C, the compute time per forward
  host          N blocks streamed from pinned host RAM
  donor_peer    N blocks streamed from the donor's VRAM peer-to-peer (skipped without peer access)
  donor_bounce  the same through the pinned host bounce ring (the fallback without peer access)
  split         N blocks split over host + donor by the planner with the probed topology
  alternate     N blocks alternating host / donor, whatever the bandwidths (the split without a topology)
Per streaming case: s/forward (median), bytes per path, achieved GB/s = streamed bytes / forward time, and
bound = max(C, bytes_host / W_host, bytes_donor / W_donor) with paths of one bottleneck group added and
divided by the group's concurrent rate. A synthetic model of equal blocks (two bf16 Linear layers each) is used
so that nothing but distorch and torch is needed:

    python bench/bench_multi_gpu.py [--compute cuda:0] [--donor cuda:1] [--blocks 24] [--streamed 16]
                                    [--width 8192] [--steps 10] [--warmup 3] [--cache PATH] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distorch.budget import apply_topology  # noqa: E402
from distorch.engine import EngineOptions, StreamingEngine  # noqa: E402
from distorch.layout import layout_model  # noqa: E402
from distorch.planner import PlacementPlan, StoreBudget, plan_placement  # noqa: E402
from distorch.topology import Topology, probe_topology  # noqa: E402

GB = 1e9


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, width, bias=False)
        self.down = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x))) * 1e-3


class BenchModel(nn.Module):
    def __init__(self, blocks: int, width: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def make_model(args) -> BenchModel:
    torch.manual_seed(0)
    with torch.device("cpu"):
        return BenchModel(args.blocks, args.width).to(torch.bfloat16)


def emit(record: dict, out: Path | None) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def time_forwards(model: nn.Module, x: torch.Tensor, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per forward, each timed with CUDA events on the compute stream."""
    times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def plan_for(model: nn.Module, compute: str, count: int, stores: list[StoreBudget], slots: int) -> PlacementPlan:
    """Stream exactly ``count`` equal blocks: the budget holds the others plus the ring (planner spreads them)."""
    layout = layout_model(model)
    size = max(n for _, n in layout.block_sizes)
    budget = layout.total_bytes - count * size + min(slots, count) * size
    return plan_placement(layout.block_sizes, layout.other_bytes, compute, budget, stores,
                          ring_slots=slots, keep_head_blocks=1)


def alternate(plan: PlacementPlan, devices: list[str]) -> PlacementPlan:
    streamed = tuple((name, devices[i % len(devices)]) for i, (name, _) in enumerate(plan.streamed))
    return dataclasses.replace(plan, streamed=streamed)


def bound_seconds(plan: PlacementPlan, topology: Topology, compute_s: float) -> float | None:
    """max(C, per bottleneck group: its bytes / its rate); None when a rate is unknown."""
    held = plan.bytes_by_store()
    groups: dict[str, list[str]] = {}
    for store in held:
        group = topology.group_of(store)
        if group is None:
            return None
        groups.setdefault(group, []).append(store)
    worst = compute_s
    for group, stores in groups.items():
        rate = topology.group_rate(group, stores)
        if not rate:
            return None
        worst = max(worst, sum(held[s] for s in stores) / (rate * GB))
    return worst


def run_case(name: str, args, plan: PlacementPlan, topology: Topology, compute_s: float, route: str | None,
             x: torch.Tensor, out: Path | None) -> None:
    device = torch.device(args.compute)
    model = make_model(args)
    engine = StreamingEngine(model, plan, EngineOptions(ring_slots=args.slots, donor_route=route))
    try:
        engine.load(device)
        seconds = time_forwards(model, x, device, args.steps, args.warmup)
        stats = engine.telemetry.summary()
        held = plan.bytes_by_store()
        bound = bound_seconds(plan, topology, compute_s)
        used = list(held)
        emit({"case": name, "s_per_forward": seconds, "compute_s": compute_s, "bound_s": bound,
              "x_bound": seconds / bound if bound else None,
              "bytes_per_path": held, "groups": {s: topology.group_of(s) for s in used},
              "streamed_gb": plan.streamed_bytes / GB, "achieved_gbps": plan.streamed_bytes / seconds / GB,
              "effective_gbps_probed": topology.effective_gbps(used),
              "sum_of_single_paths_gbps": sum(topology.links[s].gbps or 0.0 for s in used if s in topology.links),
              "telemetry_gbps": stats.gbps, "overlap": stats.overlap, "misses": engine.misses}, out)
    except Exception as error:  # a case that fails is reported, the others still run
        emit({"case": name, "error": f"{type(error).__name__}: {error}"}, out)
    finally:
        engine.unload("cpu")
        del engine, model
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute", default="cuda:0")
    parser.add_argument("--donor", default="cuda:1")
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--streamed", type=int, default=16)
    parser.add_argument("--width", type=int, default=8192)  # 2 x 8192^2 bf16 = 268 MB per block
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cache", default=None, help="topology cache JSON (default: probe every run)")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    out = Path(args.out) if args.out else None
    if torch.cuda.device_count() < 2:
        emit({"case": "skipped", "reason": f"needs 2 CUDA devices, found {torch.cuda.device_count()}"}, out)
        return

    compute, donor = args.compute, args.donor
    topology = probe_topology(compute, ["cpu", donor], args.cache)
    print(topology.describe(), file=sys.stderr)
    host_link, donor_link = topology.links["cpu"], topology.links.get(donor)
    emit({"case": "topology", "compute": compute, "donor": donor,
          "peer": donor_link.peer if donor_link else None,
          "host_gbps": host_link.gbps, "donor_gbps": donor_link.gbps if donor_link else None,
          "concurrent_gbps": topology.group_gbps.get(host_link.group),
          "groups": {s: l.group for s, l in topology.links.items()},
          "effective_gbps": topology.effective_gbps(["cpu", donor]),
          "sum_of_singles_gbps": (host_link.gbps or 0.0) + ((donor_link.gbps or 0.0) if donor_link else 0.0),
          "torch": torch.__version__, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
         out)

    device = torch.device(compute)
    x = torch.randn(args.tokens, args.width, dtype=torch.bfloat16, device=device)
    model = make_model(args).to(device)
    compute_s = time_forwards(model, x, device, args.steps, args.warmup)
    emit({"case": "resident", "s_per_forward": compute_s, "blocks": args.blocks,
          "model_gb": layout_model(model).total_bytes / GB}, out)
    del model
    torch.cuda.empty_cache()

    template = make_model(args)
    stores = apply_topology([StoreBudget(donor), StoreBudget("cpu")], topology)
    host_only = plan_for(template, compute, args.streamed, [StoreBudget("cpu")], args.slots)
    donor_only = plan_for(template, compute, args.streamed, [StoreBudget(donor)], args.slots)
    split = plan_for(template, compute, args.streamed, stores, args.slots)
    print(split.table(), file=sys.stderr)
    run_case("host", args, host_only, topology, compute_s, None, x, out)
    if donor_link is not None and donor_link.peer:
        run_case("donor_peer", args, donor_only, topology, compute_s, "peer", x, out)
    else:
        emit({"case": "donor_peer", "skipped": "no peer access"}, out)
    run_case("donor_bounce", args, donor_only, topology, compute_s, "bounce", x, out)
    run_case("split", args, split, topology, compute_s, None, x, out)
    run_case("alternate", args, alternate(split, [donor, "cpu"]), topology, compute_s, None, x, out)


if __name__ == "__main__":
    main()
