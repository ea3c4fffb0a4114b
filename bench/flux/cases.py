"""The cases, in the order they run: W, all-resident, ComfyUI native, DisTorch (see bench/README.md).

Imports the project and ComfyUI's modules at the top: import this module only after
harness.setup_comfy() and harness.import_project_package().
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

from comfyui_distorch.distorch.engine import EngineOptions
from comfyui_distorch.distorch.registry import REGISTRY

from . import plans, report
from .harness import GB, Bench, core_settings, environment, import_project
from .plans import ChosenPlan

log = logging.getLogger("bench")
NATIVE_CORE_KEYS = ("NUM_STREAMS", "pinned_memory_on", "async_offload_on", "vram_state")


@dataclass
class Session:
    """What the cases share: the harness, the output, and the numbers later cases are measured against."""

    opts: argparse.Namespace
    bench: Bench
    reporter: report.Reporter
    settings: dict[str, Any]
    dl: ModuleType | None = None  # nodes.distorch_loaders; None when it failed to import
    W: float | None = None  # pinned host->GPU GB/s
    C: dict[int, float] = field(default_factory=dict)  # batch -> all-resident s/it
    native: dict[str, float] = field(default_factory=dict)  # plan key -> native s/it at that plan's budget
    plans: dict[str, ChosenPlan] = field(default_factory=dict)  # "c"/"d" -> the plan of that target
    labels: dict[str, str] = field(default_factory=dict)  # "c"/"d" -> size part of the case names

    def record(self, case: str, s: dict[str, Any], streamed: int, resident: int | None, C: float | None,
               extra: dict[str, Any]) -> dict[str, Any]:
        return report.case_record(case, s, streamed, resident, C, self.W, self.bench.vram(), extra)

    def guarded(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one case; a failure becomes its error line. Everything is unloaded afterwards."""
        self.bench.reset_peak()
        try:
            return fn()
        except Exception as exc:
            self.reporter.error(name, exc)
            return None
        finally:
            try:
                self.bench.free_all()
            except Exception:
                log.exception("free_all after %s failed", name)


# --------------------------------------------------------------------------------------------------
# (b) W, plans
# --------------------------------------------------------------------------------------------------
def bandwidth_case(s: Session) -> dict[str, Any]:
    import h2d_bandwidth  # bench/h2d_bandwidth.py, on sys.path through the entry point

    rec = {"case": "b_bandwidth", **h2d_bandwidth.measure(s.bench.device)}
    s.reporter.emit(rec)
    return rec


def choose_plans(s: Session, base: Any, cases: set[str]) -> None:
    """The plans of the c and d targets (the native cases need them too, for their budgets)."""
    targets = {"c": s.opts.stream_c_gb * GB, "d": s.opts.stream_d_gb * GB}
    s.labels = {key: plans.label(v) for key, v in targets.items()}
    for key, target in targets.items():
        if not (key in cases or "e" in cases or (key == "c" and "f" in cases)):
            continue
        try:
            chosen = plans.choose(base.model, s.bench.device, target, s.opts.ring_slots, s.opts.keep_head_blocks)
        except Exception as exc:
            s.reporter.error(f"plan_{key}", exc)
            continue
        s.plans[key] = chosen
        s.labels[key] = plans.label(chosen.plan.streamed_bytes)
        p = chosen.plan
        log.info("plan %s: virtual_vram_gb=%s streamed %.2f GB, resident %.2f GB, ring %d x %.2f GB\n%s", key,
                 chosen.request.virtual_vram_gb, p.streamed_bytes / GB, p.resident_bytes / GB, p.ring_slots,
                 p.slot_bytes / GB, p.table())
    if s.labels["c"] == s.labels["d"]:
        s.labels["d"] += "_d"  # tiny models: both targets can land on the same plan


# --------------------------------------------------------------------------------------------------
# (a), (f) all-resident; (e) ComfyUI native
# --------------------------------------------------------------------------------------------------
def resident_case(s: Session, base: Any, batch: int, name: str) -> dict[str, Any]:
    sampled = s.bench.sample(base, batch)
    model_bytes = base.model_size()
    full = (not base.model.model_lowvram) and base.loaded_size() >= model_bytes
    s.bench.reference[batch] = sampled.pop("output")
    s.C[batch] = sampled["s_per_it"]
    rec = s.record(name, sampled, 0, base.loaded_size(), sampled["s_per_it"],
                   {"batch": batch, "model_bytes": model_bytes, "fully_loaded": full})
    s.reporter.emit(rec)
    return rec


@contextlib.contextmanager
def core_budget(mm: Any, target_model: Any, budget: int) -> Iterator[None]:
    """Core's own partial load (load_models_gpu -> LoadedModel.model_load -> ModelPatcher.partially_load), with
    the weight budget fixed to DisTorch's device footprint instead of "whatever VRAM is free"."""
    orig = mm.LoadedModel.model_load

    def capped(self, lowvram_model_memory=0, force_patch_weights=False):
        if self.model is not None and self.model.model is target_model:
            # what is left to place = budget - already loaded
            lowvram_model_memory = max(budget - self.model.loaded_size(), 1)
        return orig(self, lowvram_model_memory, force_patch_weights)

    mm.LoadedModel.model_load = capped
    try:
        yield
    finally:
        mm.LoadedModel.model_load = orig


def native_case(s: Session, base: Any, key: str, name: str) -> dict[str, Any]:
    mm = s.bench.mm
    budget = s.plans[key].plan.device_footprint_bytes
    with core_budget(mm, base.model, budget):
        sampled = s.bench.sample(base, 1)
    loaded = base.loaded_size()
    out = sampled.pop("output")
    s.native[key] = sampled["s_per_it"]
    rec = s.record(name, sampled, base.model_size() - loaded, loaded, s.C.get(1), {
        "batch": 1, "lowvram_model_memory": budget, "model_lowvram": bool(base.model.model_lowvram),
        "offload_buffer_bytes": base.model.model_offload_buffer_memory, "core_pinned_bytes": mm.TOTAL_PINNED_MEMORY,
        "max_abs_diff_vs_resident": s.bench.compare(1, out),
        "core": {k: s.settings[k] for k in NATIVE_CORE_KEYS},
    })
    s.reporter.emit(rec)
    return rec


def base_model_cases(s: Session, cases: set[str]) -> None:
    """Everything on the freshly loaded core model: plans, (a)/(f) all-resident, (e) native."""
    base = s.bench.load_base()
    choose_plans(s, base, cases)
    if cases & {"a", "c", "d", "e"}:  # C is every other case's reference
        s.guarded("a_resident", lambda: resident_case(s, base, 1, "a_resident"))
    if "f" in cases:
        s.guarded("f_resident_b4", lambda: resident_case(s, base, s.opts.batch_f, "f_resident_b4"))
    if "e" in cases:
        for key in ("c", "d"):
            if key in s.plans:
                name = f"e_native_{s.labels[key]}"
                s.guarded(name, lambda key=key, name=name: native_case(s, base, key, name))
    del base
    s.bench.free_all()


# --------------------------------------------------------------------------------------------------
# (c), (d), (f) DisTorch
# --------------------------------------------------------------------------------------------------
def build_streaming(s: Session, chosen: ChosenPlan) -> tuple[Any, float]:
    """The node's path: make_streaming on a freshly loaded ModelPatcher; (patcher, load + wrap seconds)."""
    t0 = time.perf_counter()
    options = EngineOptions(ring_slots=chosen.request.ring_slots, split_host_copies=not s.opts.single_copy_stream)
    patcher = s.dl.make_streaming(s.bench.load_base(), chosen.request, options)
    return patcher, time.perf_counter() - t0


def newest_prompt_stats() -> dict[str, Any] | None:
    """The registry's newest prompt record: what the patcher's OUTER_SAMPLE wrapper wrote after sampling."""
    recent = REGISTRY.recent_prompt_stats()
    return recent[-1] if recent else None


def distorch_case(s: Session, key: str, patcher: Any, build_s: float, batch: int, name: str) -> dict[str, Any]:
    chosen = s.plans[key]
    plan = chosen.plan
    before = newest_prompt_stats()
    sampled = s.bench.sample(patcher, batch)
    out = sampled.pop("output")
    after = newest_prompt_stats()
    tel = report.telemetry(after if after is not before else None, s.opts.warmup)
    Cb = s.C.get(batch)
    rec = s.record(name, sampled, plan.streamed_bytes, plan.resident_bytes, Cb, {
        "batch": batch, "virtual_vram_gb": chosen.request.virtual_vram_gb,
        "plan_source": "make_streaming", "plan_note": chosen.note, "plan": plans.summary(plan),
        "load_and_wrap_s": build_s, "max_abs_diff_vs_resident": s.bench.compare(batch, out), "telemetry": tel,
    })
    if batch == 1 and key in s.native:
        rec["ours_over_native"] = sampled["s_per_it"] / s.native[key]
        rec["native_s_per_it"] = s.native[key]
    if Cb:
        rec["over_resident"] = sampled["s_per_it"] / Cb
    timed = tel.get("timed") or {}
    if timed.get("copy_s"):
        # fraction of each step the copy streams were busy: near 1.0 means the link, not the schedule, is
        # the limit (then the gap to the bound is the copies' own GB/s against W)
        rec["copy_link_busy"] = timed["copy_s"] / sampled["s_per_it"]
    return rec


def distorch_cases(s: Session, key: str, batches: list[tuple[int, str]]) -> None:
    """One streaming model per plan, kept loaded across its batch sizes and unloaded after the last."""
    if s.dl is None or key not in s.plans:
        return
    patcher, build_s = None, None
    for batch, name in batches:
        s.bench.reset_peak()
        try:
            if patcher is None:
                patcher, build_s = build_streaming(s, s.plans[key])
            s.reporter.emit(distorch_case(s, key, patcher, build_s, batch, name))
        except Exception as exc:
            s.reporter.error(name, exc)
    del patcher
    s.bench.free_all()


# --------------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------------
def start(opts: argparse.Namespace, comfy: dict[str, Any]) -> Session:
    """The harness, the `env` line, W (case b or --assume-w-gbps) and the node module."""
    bench = Bench(opts, comfy["mm"])
    s = Session(opts, bench, report.Reporter(opts.out), core_settings(comfy["mm"], comfy["args"]))
    env = environment(opts, bench.cuda, s.settings)
    log.info("environment: %s", json.dumps(env, default=report.json_default))
    print(json.dumps({"case": "env", **env}, default=report.json_default), flush=True)
    if "b" in opts.cases.split(",") and bench.cuda:
        rec = s.guarded("b_bandwidth", lambda: bandwidth_case(s))
        s.W = rec["W_GBps"] if rec else None
    if s.W is None and opts.assume_w_gbps:
        s.W = opts.assume_w_gbps
    try:
        s.dl = import_project()
    except Exception as exc:  # the native cases still run: their budgets need only distorch.*
        s.reporter.error("import_project", exc)
    return s


def run_all(opts: argparse.Namespace, comfy: dict[str, Any]) -> int:
    cases = set(opts.cases.split(","))
    s = start(opts, comfy)
    base_model_cases(s, cases)
    if "c" in cases or "f" in cases:
        batches = [(1, f"c_distorch_{s.labels['c']}")] if "c" in cases else []
        if "f" in cases:
            batches.append((opts.batch_f, f"f_distorch_{s.labels['c']}_b{opts.batch_f}"))
        distorch_cases(s, "c", batches)
    if "d" in cases:
        distorch_cases(s, "d", [(1, f"d_distorch_{s.labels['d']}")])
    report.summary(s.reporter.results)
    s.reporter.close()
    return 0
