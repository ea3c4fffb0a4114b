"""bench/compare_hosts.py's cases and what is derived from their lines: bounds, ours/core ratios, the targets.

Cases, per host in the order given: all-resident (C of each cfg), then per free-VRAM target core and ours side
by side (a run cut short by its deadline still has complete pairs). Each case is one worker process that runs
every cfg. Derived fields are added to a line as soon as the numbers it needs exist (W, C, core of the same
host, free VRAM and cfg); cross-host ratios and the target checks come in the final `summary` line.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import GB
from .report import bound_s, fmt, format_table
from .worker import WorkerSpec

REPO = Path(__file__).resolve().parents[2]

# The targets (auto budget, same run): ours at least this much faster than core, per free GiB and cfg.
SPEEDUP_TARGETS: dict[float, dict[float, float] | float] = {16.0: {1.0: 1.25, 3.5: 1.10}, 6.0: 1.05}
BOUND_TARGETS = {"transfer": 1.05, "compute": 1.03}  # measured / bound, by which side of the bound dominates


def speedup_target(free_gib: float | None, cfg: float) -> float | None:
    target = SPEEDUP_TARGETS.get(free_gib) if free_gib is not None else None
    return target.get(cfg) if isinstance(target, dict) else target


def budget_label(budget: str) -> str:
    return "auto" if budget == "auto" else f"{float(budget):g}gb"


@dataclass(frozen=True)
class HostTree:
    version: str
    root: Path
    env: dict[str, str]  # what makes a child process use this host (site layer first on PYTHONPATH)


def build_specs(opts: argparse.Namespace, hosts: list[HostTree], work: Path) -> list[tuple[WorkerSpec, HostTree]]:
    """The workers, in the order they run."""
    specs = []
    for host in hosts:
        common = dict(host=host.version, comfy_root=str(host.root), cfgs=opts.cfgs, model=str(opts.model),
                      reference_dir=str(work / "latents"), dynamic_vram=opts.dynamic_vram == "on", cpu=opts.cpu,
                      size=opts.size, steps=opts.steps, warmup=opts.warmup, tokens=opts.tokens, seed=opts.seed,
                      ring_slots=opts.ring_slots, keep_head_blocks=opts.keep_head_blocks,
                      prompts=getattr(opts, "prompts", 1), profile=getattr(opts, "profile", None) or None,
                      profile_dir=str(opts.profile_dir) if getattr(opts, "profile_dir", None) else None)

        def add(case: str, **kw: Any) -> None:
            path = work / f"worker{len(specs):02d}.jsonl"
            specs.append((WorkerSpec(case=case, result_path=str(path), **common, **kw), host))

        if "resident" in opts.modes:
            add(f"{host.version}/resident", mode="resident")
        for free in opts.free_gib:
            if "core" in opts.modes:
                add(f"{host.version}/core/{free:g}GiB", mode="core", free_gib=free)
            if "ours" in opts.modes and (not opts.ours_hosts or host.version in opts.ours_hosts):
                for budget in opts.ours_budget:
                    add(f"{host.version}/ours-{budget_label(budget)}/{free:g}GiB", mode="ours", free_gib=free,
                        ours_budget=budget)
    return specs


def pipeline_fields(rec: dict[str, Any], C: float | None, W: float | None) -> dict[str, Any]:
    """The plan's own limit (distorch.pipeline_model): its measured block compute, the compute outside the blocks
    (C minus the blocks), its copies at W, replayed through R slots. max(C, T) assumes unlimited staging; this
    is what R slots of this plan allow. Only for one forward per step (a split step runs the plan twice)."""
    inputs = rec.get("pipeline_inputs")
    if not inputs or C is None or not W or rec.get("forwards_per_step") != 1:
        return {}
    if str(REPO) not in sys.path:  # the driver imports no ComfyUI and no project package; the model is pure Python
        sys.path.insert(0, str(REPO))
    from distorch.pipeline_model import simulate_forward

    blocks = inputs["block_seconds"]

    def replay(other: float):
        return simulate_forward(blocks, inputs["streamed_bytes"], inputs["slot_bytes"], inputs["ring_slots"], W * GB,
                                other_seconds=other)

    # The compute outside the blocks is the resident step's (C) minus its blocks; on ComfyUI 0.33 C also holds a
    # per-step host wait that a streamed run may not have, so the blocks alone (nothing outside) bound it from below.
    estimate, blocks_only = replay(max(C - sum(blocks), 0.0)), replay(0.0)
    return {"pipeline_s": estimate.forward_s, "measured_over_pipeline": rec["s_per_it"] / estimate.forward_s,
            "pipeline_compute_wait_s": estimate.compute_wait_s, "pipeline_link_idle_s": estimate.link_idle_s,
            "pipeline_blocks_only_s": blocks_only.forward_s}


@dataclass
class Results:
    """Every line so far, and the references later lines are measured against."""

    W: float | None  # pinned host->GPU GB/s
    # (host, cfg, prompt) -> all-resident s/it of the unprofiled resident run of that rank (on ComfyUI 0.33 a
    # model's first run and its later ones differ by a few %, as their bits do)
    C: dict[tuple[str, float, int], float] = field(default_factory=dict)
    # (host, free, cfg, prompt) -> core's line: ours is compared with core's run of the same prompt number
    core: dict[tuple[str, float, float, int], dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Derive what can be derived now, remember the line; returns it."""
        if "s_per_it" in rec:
            if rec["mode"] == "resident" and "profile" not in rec:  # the profiler slows the host side
                self.C[(rec["host"], rec["cfg"], rec.get("prompt", 1))] = rec["s_per_it"]
            self.add_bound(rec)
            if rec["mode"] == "core" and "profile" not in rec:
                self.core[(rec["host"], rec["free_gib_target"], rec["cfg"], rec.get("prompt", 1))] = rec
            if rec["mode"] == "ours":
                self.add_ratios(rec)
        self.records.append(rec)
        return rec

    def add_bound(self, rec: dict[str, Any]) -> None:
        """bound = max(C of this host and cfg, streamed bytes / W); which side dominates picks the target."""
        C, streamed = self.compute_s(rec["host"], rec["cfg"], rec.get("prompt", 1)), rec.get("streamed_bytes")
        transfer = streamed / (self.W * GB) if streamed and self.W else (0.0 if streamed == 0 else None)
        bound = bound_s(C, streamed, self.W) if streamed is not None else None
        rec.update({"W_GBps": self.W, "C_s_per_it": C, "transfer_s": transfer, "bound_s": bound,
                    "measured_over_bound": rec["s_per_it"] / bound if bound else None,
                    "bound_kind": None if C is None or transfer is None else
                    ("transfer" if transfer > C else "compute")})
        rec.update(pipeline_fields(rec, C, self.W))

    def compute_s(self, host: str, cfg: float, prompt: int) -> float | None:
        """C of that prompt's rank, else the fastest resident run of that host and cfg (the stricter bound)."""
        same = self.C.get((host, cfg, prompt))
        others = [v for (h, c, _), v in self.C.items() if h == host and c == cfg]
        return same if same is not None else min(others) if others else None

    def add_ratios(self, rec: dict[str, Any]) -> None:
        """ours against core of the same host, free VRAM and cfg (and of every host measured so far)."""
        key = (rec["free_gib_target"], rec["cfg"])
        core = self.core.get((rec["host"], *key, rec.get("prompt", 1)))
        rec["ours_over_core_by_host"] = self.by_host(rec)
        if core is None:
            return
        rec.update({
            "core_s_per_it": core["s_per_it"],
            "ours_over_core": rec["s_per_it"] / core["s_per_it"],
            "speedup_vs_core": core["s_per_it"] / rec["s_per_it"],
            "speedup_target": speedup_target(*key),
            "first_step_ratio": ratio(rec.get("first_step_incl_load_s"), core.get("first_step_incl_load_s")),
            "first_step_ratio_incl_wrap": ratio((rec.get("first_step_incl_load_s") or 0) + (rec.get("wrap_s") or 0),
                                                core.get("first_step_incl_load_s")),
            "core_forwards_per_step": core.get("forwards_per_step"),
            "core_cond_uncond_batched": core.get("cond_uncond_batched"),
            "core_memory_path": core.get("memory_path"),
        })

    def by_host(self, rec: dict[str, Any]) -> dict[str, float]:
        return {host: rec["s_per_it"] / core["s_per_it"] for (host, free, cfg, prompt), core in self.core.items()
                if free == rec["free_gib_target"] and cfg == rec["cfg"] and prompt == rec.get("prompt", 1)}

    def summary(self) -> dict[str, Any]:
        """The final line: every target check, cross-host ratios with all hosts measured, failed cases."""
        ours = [r for r in self.records if r.get("mode") == "ours" and "s_per_it" in r]
        checks = [c for r in self.records if "s_per_it" in r for c in target_checks(r)]
        C = {f"{h}/cfg{c:g}/prompt{p}": v for (h, c, p), v in self.C.items()}
        return {"case": "summary", "W_GBps": self.W, "C_s_per_it": C,
                "checks_passed": sum(c["passed"] is True for c in checks),
                "checks_failed": sum(c["passed"] is False for c in checks), "checks": checks,
                "ratios": [{"case": r["case"], "ours_over_core_by_host": self.by_host(r),
                            "first_step_ratio": r.get("first_step_ratio")} for r in ours],
                "errors": [r["case"] for r in self.records if "error" in r]}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def check(rec: dict[str, Any], what: str, value: Any, target: str, passed: bool | None) -> dict[str, Any]:
    return {"case": rec["case"], "check": what, "value": value, "target": target, "passed": passed}


def target_checks(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for one line (None = not decidable from this run)."""
    out = []
    if rec["mode"] != "resident":  # a profiled run's bits count; its speed does not (the profiler's host overhead)
        same = rec.get("bit_identical_to_resident")
        out.append(check(rec, "bit-identical to all-resident", rec.get("max_abs_diff_vs_resident"), "== 0", same))
    if rec["mode"] != "ours" or "profile" in rec:
        return out
    target = rec.get("speedup_target")
    if target is not None:
        value = rec.get("speedup_vs_core")
        out.append(check(rec, "speedup vs core", value, f">= {target}", None if value is None else value >= target))
    kind, mob = rec.get("bound_kind"), rec.get("measured_over_bound")
    if kind is not None:
        limit = BOUND_TARGETS[kind]
        out.append(check(rec, f"measured/bound ({kind} dominates)", mob, f"<= {limit}",
                         None if mob is None else mob <= limit))
    if rec.get("core_cond_uncond_batched"):
        out.append(check(rec, "cond+uncond batched where core batches", rec.get("forwards_per_step"),
                         "1 forward/step", rec.get("cond_uncond_batched") is True))
    if rec.get("prompt", 1) == 1:  # a later prompt's first step has no load in it (or, for ours, a re-plan)
        first = rec.get("first_step_ratio")
        out.append(check(rec, "first step <= core's", first, "<= 1", None if first is None else first <= 1.0))
    return out


# --------------------------------------------------------------------------------------------------
# the tables printed at the end
# --------------------------------------------------------------------------------------------------
CASE_HEADER = ("case", "s/it", "x bound", "x pipeline", "ours/core", "first step", "fwd/step", "peak GB",
               "streamed GB", "identical", "memory path")


def case_row(r: dict[str, Any]) -> tuple[str, ...]:
    if "s_per_it" not in r:
        return (r["case"], "ERROR", "", "", "", "", "", "", "", "", (r.get("error") or "")[:90])
    path = r.get("memory_path") or {}
    return (r["case"], fmt(r["s_per_it"], "{:.3f}"), fmt(r.get("measured_over_bound"), "{:.3f}"),
            fmt(r.get("measured_over_pipeline"), "{:.3f}"), fmt(r.get("ours_over_core"), "{:.3f}"),
            fmt(r.get("first_step_incl_load_s"), "{:.2f}"),
            str(r.get("forwards_per_step", "-")), fmt((r.get("peak_device_used_bytes") or 0) / GB, "{:.2f}"),
            fmt((r.get("streamed_bytes") or 0) / GB, "{:.2f}"), str(r.get("bit_identical_to_resident", "-")),
            f"{'dynamic' if path.get('dynamic_vram') else 'classic'} {path.get('patcher_class', '')}")


def tables(results: Results, summary: dict[str, Any]) -> str:
    cases = [CASE_HEADER] + [case_row(r) for r in results.records if r.get("case") not in ("env", "W")]
    checks = [("case", "check", "value", "target", "passed")] + [
        (c["case"], c["check"], fmt(c["value"], "{:.3f}"), c["target"], str(c["passed"])) for c in summary["checks"]]
    return format_table(cases) + "\n\n" + format_table(checks)
