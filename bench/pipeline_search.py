#!/usr/bin/env python3
"""How much faster could another plan of the same VRAM be? Asks distorch/pipeline_model.py, offline.

Reads one `ours` line of bench/compare_hosts.py (its `pipeline_inputs`: measured compute per block, the plan's
streamed bytes and slots; W and C of the run) and replays random plans that use the same device memory for
resident blocks plus ring (ring depths 2-4, resident double/single blocks drawn at random), printing the plan's
own estimate and the best one found per ring depth. No GPU: the model is pure Python.

    python bench/pipeline_search.py bench/results/h200-2026-12-02-6gib-pipeline.jsonl \
        0.33.0/ours-auto/6GiB/cfg3.5/prompt2
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distorch.pipeline_model import simulate_forward  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("case")
    ap.add_argument("--tries", type=int, default=3000, help="random plans per ring depth")
    ap.add_argument("--seed", type=int, default=0)
    opts = ap.parse_args()
    rec = next(r for r in map(json.loads, opts.results.read_text().splitlines()) if r.get("case") == opts.case)
    inputs, W = rec["pipeline_inputs"], rec["W_GBps"] * 1e9
    seconds, slot = inputs["block_seconds"], inputs["slot_bytes"]
    sizes = inputs.get("block_bytes")
    if sizes is None:  # lines written before the worker recorded every block's size
        sizes = [size or slot for size in inputs["streamed_bytes"]]
        print(json.dumps({"note": "no block_bytes in this line: resident blocks taken as slot-sized (exact when "
                                  "every resident block is a largest block, e.g. Flux's double blocks)"}))
    other = max(rec["C_s_per_it"] - sum(seconds), 0.0)
    memory = sum(sizes) - sum(inputs["streamed_bytes"]) + inputs["ring_slots"] * slot
    own = simulate_forward(seconds, inputs["streamed_bytes"], slot, inputs["ring_slots"], W, other)
    print(json.dumps({"case": opts.case, "measured_s": rec["s_per_it"], "plan_estimate_s": own.forward_s,
                      "bound_s": rec["bound_s"], "memory_bytes": memory}))
    rnd = random.Random(opts.seed)
    for slots in (2, 3, 4):
        best = None
        for _ in range(opts.tries):
            budget = memory - slots * slot
            resident, order = set(), list(range(len(sizes)))
            rnd.shuffle(order)
            for index in order[:rnd.randint(0, len(order))]:
                if sum(sizes[i] for i in resident) + sizes[index] <= budget:
                    resident.add(index)
            plan = [0 if i in resident else size for i, size in enumerate(sizes)]
            estimate = simulate_forward(seconds, plan, slot, slots, W, other)
            if best is None or estimate.forward_s < best[0].forward_s:
                best = (estimate, sorted(resident))
        estimate, resident = best
        print(json.dumps({"ring_slots": slots, "best_s": estimate.forward_s, "transfer_s": estimate.transfer_s,
                          "resident_blocks": resident, "best_over_bound": estimate.forward_s / rec["bound_s"]}))


if __name__ == "__main__":
    main()
