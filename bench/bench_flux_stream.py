#!/usr/bin/env python3
"""Flux.1-dev-shaped streaming benchmark: DisTorch against all-resident and ComfyUI's own partial offload.

In-process real ComfyUI (the tree at --comfy-root, 0.3.75 in this project), the full-size random-weight
Flux.1-dev bf16 model written by scripts/synth_models.py, 1024x1024 (latent 16x128x128), euler, simple
scheduler, cfg 1 (one forward per step), conditioning = seeded random tensors of T5/CLIP shapes (context
[1, 512, txt_in.in_features], pooled [1, vector_in.in_features], guidance 3.5), so no text encoder is loaded.

Timing: one `comfy.sample.sample` call of warmup + timed steps per case; the sampler callback records a CUDA
event on the compute stream at the end of every step (no host synchronisation is added); s/it is the MEDIAN
of the timed steps' event-to-event times (steps after the warm-up ones; the model load happens before the
first step and is never inside a timed step). `s_per_it_mean` is given too.

Cases (one JSON line each; see bench/README.md for every field):
  b_bandwidth           W: pinned host->GPU GB/s, 1 GiB chunks
  a_resident            C: everything on the GPU, batch 1
  f_resident_b4         batch 4, everything on the GPU (the compute-bound reference)
  e_native_<X>gb        ComfyUI's own partial load (LoadedModel/ModelPatcher.partially_load via
                        load_models_gpu, async offload streams and pinned memory as core sets them) with
                        lowvram_model_memory = the DisTorch case's device footprint (resident + ring)
  c_distorch_<X>gb      DisTorch, ~13 GB streamed (make_streaming on the freshly loaded ModelPatcher)
  f_distorch_<X>gb_b4   batch 4 through the same DisTorch model
  d_distorch_<X>gb      DisTorch, ~22 GB streamed (~2 GB of weights kept on the GPU)

A benchmark, never a test: it asserts nothing about speed. `--tiny` runs the same code path on the CPU
with the tiny Flux (1+1 blocks) to check the harness end to end.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import inspect
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

GB = 1e9
PKG = "comfyui_distorch"
log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------------
# set-up: ComfyUI in-process, the project as a package
# --------------------------------------------------------------------------------------------------
def setup_comfy(root: Path, cpu: bool) -> dict[str, Any]:
    """Import ComfyUI the way its own tests do, without argv parsing; CUDA unless `cpu`."""
    root = root.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True
    import comfy.model_management as mm
    import utils.extra_config  # noqa: F401  (before `nodes`, else nodes_images fails: 'utils' is not a package)
    import nodes  # noqa: F401  (top-level ComfyUI nodes: our loaders look core nodes up here)
    import comfy.sample
    import comfy.sd

    return {"mm": mm, "args": comfy.cli_args.args}


def import_project_package() -> None:
    """Make `comfyui_distorch` importable (a symlink to the repository under a valid module name)."""
    link_dir = Path(tempfile.gettempdir()) / "distorch_bench_pkgs"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / PKG
    if link.is_symlink() and link.resolve() != REPO:
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    if str(link_dir) not in sys.path:
        sys.path.insert(0, str(link_dir))


def import_project() -> Any:
    """`comfyui_distorch.nodes.distorch_loaders`, the way ComfyUI's custom-node loader would reach it."""
    import_project_package()
    return importlib.import_module(f"{PKG}.nodes.distorch_loaders")


def core_settings(mm: Any, args: Any) -> dict[str, Any]:
    """Which of core's offload features were active (0.3.75 names; absent ones are reported as None)."""
    get = lambda name: getattr(mm, name, None)  # noqa: E731
    vram = get("vram_state")
    return {
        "NUM_STREAMS": get("NUM_STREAMS"),
        "MAX_PINNED_MEMORY": get("MAX_PINNED_MEMORY"),
        "pinned_memory_on": (get("MAX_PINNED_MEMORY") or 0) > 0,
        "async_offload_on": (get("NUM_STREAMS") or 0) > 0,
        "vram_state": getattr(vram, "name", str(vram)),
        "lowvram_available": get("lowvram_available"),
        "disable_smart_memory": get("DISABLE_SMART_MEMORY"),
        "args.async_offload": getattr(args, "async_offload", None),
        "args.disable_async_offload": getattr(args, "disable_async_offload", None),
        "args.disable_pinned_memory": getattr(args, "disable_pinned_memory", None),
        "dynamic_vram_generation": importlib.util.find_spec("comfy.memory_management") is not None,
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }


# --------------------------------------------------------------------------------------------------
# the model, conditioning, sampling and timing
# --------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, opts: argparse.Namespace, comfy: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.o = opts
        self.mm = comfy["mm"]
        self.cuda = torch.cuda.is_available() and not opts.tiny_cpu
        self.device = opts.device if self.cuda else "cpu"
        self.results: dict[str, dict[str, Any]] = {}
        self.reference: dict[int, Any] = {}  # batch -> all-resident output latent (cpu), for bit-equality
        self.out = open(opts.out, "a") if opts.out else None

    # ---- bookkeeping ----
    def emit(self, record: dict[str, Any]) -> None:
        self.results[record["case"]] = record
        line = json.dumps(record, default=_json_default)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()

    def free_all(self) -> None:
        torch = self.torch
        self.mm.unload_all_models()
        self.mm.cleanup_models()
        gc.collect()
        self.mm.soft_empty_cache()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def vram(self) -> dict[str, int | None]:
        if not self.cuda:
            return {"peak_vram_bytes": None, "vram_now_bytes": None}
        return {"peak_vram_bytes": self.torch.cuda.max_memory_allocated(),
                "vram_now_bytes": self.torch.cuda.memory_allocated()}

    # ---- model ----
    def load_base(self) -> Any:
        import comfy.sd

        t0 = time.perf_counter()
        patcher = comfy.sd.load_diffusion_model(str(self.o.model))
        log.info("loaded %s in %.1f s (%s, %.2f GB)", self.o.model.name, time.perf_counter() - t0,
                 patcher.model_dtype(), patcher.model_size() / GB)
        return patcher

    def conditioning(self, patcher: Any) -> tuple[list, list]:
        torch = self.torch
        dm = patcher.model.diffusion_model
        ctx_dim = dm.txt_in.in_features
        pooled_dim = dm.vector_in.in_layer.in_features
        gen = torch.Generator().manual_seed(1234)
        cond = torch.randn(1, self.o.tokens, ctx_dim, generator=gen)
        pooled = torch.randn(1, pooled_dim, generator=gen)
        ncond = torch.randn(1, self.o.tokens, ctx_dim, generator=gen)
        npooled = torch.randn(1, pooled_dim, generator=gen)
        positive = [[cond, {"pooled_output": pooled, "guidance": 3.5}]]
        negative = [[ncond, {"pooled_output": npooled, "guidance": 3.5}]]
        return positive, negative

    def sample(self, patcher: Any, batch: int) -> dict[str, Any]:
        """One sampling run of warmup + timed steps; per-step times from events recorded in the callback."""
        import comfy.sample

        torch = self.torch
        o = self.o
        steps = o.warmup + o.steps
        latent = torch.zeros(batch, 16, o.size // 8, o.size // 8)
        noise = comfy.sample.prepare_noise(latent, o.seed)
        positive, negative = self.conditioning(patcher)
        marks: list[Any] = []
        start: list[Any] = []

        def mark_start(apply_model, args):
            # The first forward starts after the model load: the first step is timed from here.
            if not start:
                if self.cuda:
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(torch.cuda.current_stream())
                    start.append(ev)
                else:
                    start.append(time.perf_counter())
            return apply_model(args["input"], args["timestep"], **args["c"])

        patcher = patcher.clone()
        patcher.set_model_unet_function_wrapper(mark_start)

        def callback(step, x0, x, total_steps):
            if self.cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record(torch.cuda.current_stream())
                marks.append(ev)
            else:
                marks.append(time.perf_counter())

        t0 = time.perf_counter()
        out = comfy.sample.sample(patcher, noise, steps, o.cfg, o.sampler, o.scheduler, positive, negative, latent,
                                  callback=callback, disable_pbar=True, seed=o.seed)
        if self.cuda:
            torch.cuda.synchronize()
            per_step = [marks[i - 1].elapsed_time(marks[i]) / 1e3 for i in range(1, len(marks))]
            first_step = start[0].elapsed_time(marks[0]) / 1e3 if start else None
        else:
            per_step = [marks[i] - marks[i - 1] for i in range(1, len(marks))]
            first_step = marks[0] - start[0] if start else None
        wall = time.perf_counter() - t0
        # per_step[k] is step k+1; keep steps warmup..steps-1
        timed = per_step[o.warmup - 1:] if o.warmup >= 1 else per_step
        return {
            "s_per_it": statistics.median(timed),
            "s_per_it_mean": statistics.fmean(timed),
            "s_per_it_min": min(timed),
            "s_per_it_max": max(timed),
            "first_step_s": first_step,  # model load excluded: from sampling start (model loaded) to step 1's end
            "first_over_steady": first_step / statistics.median(timed) if first_step else None,
            "timed_steps": len(timed),
            "warmup_steps": o.warmup,
            "sample_wall_s": wall,
            "output": out.float().cpu(),
            "finite": bool(torch.isfinite(out).all()),
        }

    def compare(self, batch: int, out: Any) -> float | None:
        ref = self.reference.get(batch)
        if ref is None or ref.shape != out.shape:
            return None
        return float((ref - out).abs().max())

    # ---- plans ----
    def plan_for(self, dl: Any, patcher: Any, target_streamed_bytes: float) -> dict[str, Any]:
        """The plan that streams closest to the target, preferably through the node's own path.

        First choice: a `StreamRequest` for `make_streaming` (the node's path), its `virtual_vram_gb` (GB kept
        OFF the compute device) found by a scan, since the staging ring counts against the compute share.
        If no request gives a feasible plan within 10% of the target (a planner/budget limitation, reported
        in `plan_note`), the plan comes from `planner.plan_placement` with the same defaults and an uncapped
        `cpu` store, and the model is wrapped with `StreamingModelPatcher.wrap` directly (same engine).
        """
        plan_for_module, StreamRequest, blocks_and_other, node_plan = plan_tools(dl, patcher)
        model = patcher.model
        total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        best, errors = None, {}
        step = max(total / GB / 1000, 0.005)
        v = step
        while v <= total / GB + step:
            request = StreamRequest(compute_device=self.device, virtual_vram_gb=round(v, 3), donor_device="cpu",
                                    ring_slots=self.o.ring_slots, keep_head_blocks=self.o.keep_head_blocks)
            try:
                plan = plan_for_module(request)
            except Exception as exc:
                errors.setdefault(type(exc).__name__, f"virtual_vram_gb={request.virtual_vram_gb}: {exc}"[:300])
                v += step
                continue
            err = abs(plan.streamed_bytes - target_streamed_bytes)
            if plan.streamed_bytes > 0 and (best is None or err < best[0]):
                best = (err, request, plan)
            v += step
        if best is not None and best[0] <= 0.1 * target_streamed_bytes:
            plan, note = best[2], None
            if node_plan is not None:  # the node's own planning of the chosen request: the plan make_streaming uses
                plan = node_plan(best[1])
                if plan.streamed_bytes != best[2].streamed_bytes:
                    note = f"scan plan streamed {best[2].streamed_bytes}, node plan {plan.streamed_bytes}"
            return {"source": "make_streaming", "request": best[1], "plan": plan, "note": note}
        note = (f"no StreamRequest(virtual_vram_gb=...) gave a feasible plan within 10% of {target_streamed_bytes / GB:.1f} GB "
                f"streamed (closest: {best[2].streamed_bytes / GB if best else None} GB); planner errors seen: {errors}")
        log.warning("%s; falling back to plan_placement with an uncapped cpu store", note)
        planner = importlib.import_module(f"{PKG}.distorch.planner")
        defaults = StreamRequest(compute_device=self.device, virtual_vram_gb=0.0, donor_device="cpu")
        blocks, other = blocks_and_other()
        total = other + sum(n for _, n in blocks)
        best = None
        # the node's defaults first; (1 slot, no head block) only if those stream nothing (tiny models)
        for ring_slots, head in ((defaults.ring_slots, defaults.keep_head_blocks), (1, 0)):
            budget = total
            while budget > 0:
                try:
                    plan = planner.plan_placement(blocks, other, self.device, int(budget),
                                                  [planner.StoreBudget("cpu", None)],
                                                  ring_slots=ring_slots, keep_head_blocks=head)
                except Exception:
                    budget -= step * GB
                    continue
                err = abs(plan.streamed_bytes - target_streamed_bytes)
                if plan.streamed_bytes > 0 and (best is None or err < best[0]):
                    best = (err, plan, ring_slots, head)
                budget -= step * GB
            if best is not None:
                break
        if best is None:
            raise RuntimeError(note + "; plan_placement found no plan either")
        if (best[2], best[3]) != (defaults.ring_slots, defaults.keep_head_blocks):
            note += f"; used ring_slots={best[2]}, keep_head_blocks={best[3]}"
        defaults = StreamRequest(compute_device=self.device, virtual_vram_gb=0.0, donor_device="cpu",
                                 ring_slots=best[2], keep_head_blocks=best[3])
        best = (best[0], best[1])
        return {"source": "plan_placement", "request": defaults, "plan": best[1], "note": note}


def plan_tools(dl: Any, patcher: Any) -> tuple[Callable, type, Callable, Callable | None]:
    """(plan(request), StreamRequest, blocks_and_other()) for this patcher, following whichever form the
    project's modules have now: the node module's own `plan_for_module` when it imported, else the same
    built from the engine-independent modules (so the native cases still get their budgets)."""
    budget = importlib.import_module(f"{PKG}.distorch.budget")
    layout = importlib.import_module(f"{PKG}.distorch.layout")
    devices = importlib.import_module(f"{PKG}.distorch.devices")
    model = patcher.model
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    dm = getattr(model, "diffusion_model", None)

    def blocks_and_other() -> tuple[list, int]:
        if hasattr(layout, "layout_model"):  # the whole model is the engine's root
            lm = layout.layout_model(model)
            return list(lm.block_sizes), int(lm.other_bytes)
        root = dm if dm is not None else model
        blocks = [(name, layout.layout_block(name, module).nbytes) for name, module in layout.find_blocks(root)]
        return blocks, max(total - sum(n for _, n in blocks), 0)

    cached: list = []

    def fast_plan(req):  # what plan_for_module does, with the layout computed once (the scan calls this a lot)
        if not cached:
            cached.append(blocks_and_other())
        blocks, other = cached[0]
        return budget.plan_request(req, blocks, other, devices.device_total_memory)

    node_plan = None
    if dl is not None and hasattr(dl, "plan_for_module"):
        if len(inspect.signature(dl.plan_for_module).parameters) == 2:
            node_plan = lambda req: dl.plan_for_module(model, req)  # noqa: E731
        else:
            root = dm if dm is not None else model
            node_plan = lambda req: dl.plan_for_module(root, total, req)  # noqa: E731
    return fast_plan, budget.StreamRequest, blocks_and_other, node_plan


def _json_default(x: Any) -> Any:
    try:
        return float(x)
    except Exception:
        return repr(x)


def registry_last() -> Any:
    """The newest prompt record of the engine's registry (what the patcher's sampling wrapper recorded)."""
    try:
        reg = importlib.import_module(f"{PKG}.distorch.registry").REGISTRY
        recent = reg.recent_prompt_stats()
        return recent[-1] if recent else None
    except Exception:
        return None


def telemetry_of(patcher: Any, warmup: int, before: Any) -> dict[str, Any] | None:
    """The engine's own per-forward telemetry for the last sampling run, timed forwards only.

    StreamingModelPatcher's OUTER_SAMPLE wrapper takes the summary itself (summary() consumes the forwards)
    and records it in the registry: read it there; fall back to the engine's telemetry object."""
    d = registry_last()
    if d is None or d is before:
        try:
            d = patcher.distorch.engine.telemetry.summary().as_dict()
        except Exception as exc:
            return {"error": repr(exc)}
    d = dict(d)
    per = d.pop("per_forward", []) or []
    timed = per[warmup:] if len(per) > warmup else per
    out = {k: d.get(k) for k in ("forwards", "seconds_per_forward", "streamed_bytes", "copy_seconds",
                                 "stall_seconds", "gbps", "overlap", "misses")}
    if timed:
        n = len(timed)
        copy_s = sum(f.get("copy_s") or 0 for f in timed)
        stall_s = sum(f.get("stall_s") or 0 for f in timed)
        out["timed"] = {
            "forwards": n,
            "forward_s": sum(f.get("forward_s") or 0 for f in timed) / n,
            "copy_s": copy_s / n,
            "stall_s": stall_s / n,
            "compute_s_est": (sum(f.get("forward_s") or 0 for f in timed) - stall_s) / n,
            "streamed_bytes": sum(f.get("streamed_bytes") or 0 for f in timed) / n,
            "gbps": (sum(f.get("streamed_bytes") or 0 for f in timed) / copy_s / GB) if copy_s else None,
            "overlap": max(0.0, 1 - stall_s / copy_s) if copy_s else None,
            "misses": sum(f.get("misses") or 0 for f in timed),
            "copy_idle_s": sum(f.get("copy_idle_s") or 0 for f in timed) / n,
            "largest_copy_gaps": largest_gaps(timed[-1].get("timeline") or ()),
        }
    return out


def largest_gaps(timeline: Any, count: int = 4) -> list[dict[str, float]]:
    """Where the copy stream idled in one forward: the biggest gaps between consecutive copies."""
    spans = sorted((t[0], t[1], i) for i, t in enumerate(timeline))
    gaps = [{"gap_s": nxt[0] - cur[1], "after_copy": cur[2], "at_s": cur[1]} for cur, nxt in zip(spans, spans[1:])]
    return sorted(gaps, key=lambda g: -g["gap_s"])[:count]


# --------------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------------
def run(opts: argparse.Namespace) -> int:
    comfy = setup_comfy(opts.comfy_root, cpu=opts.tiny_cpu)
    import torch

    b = Bench(opts, comfy)
    mm = b.mm
    settings = core_settings(mm, comfy["args"])
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if b.cuda else "cpu",
        "model": str(opts.model),
        "size": opts.size, "steps": opts.steps, "warmup": opts.warmup, "cfg": opts.cfg,
        "sampler": opts.sampler, "scheduler": opts.scheduler, "core": settings,
    }
    log.info("environment: %s", json.dumps(env, default=_json_default))
    print(json.dumps({"case": "env", **env}, default=_json_default), flush=True)
    cases = set(opts.cases.split(","))
    import_project_package()  # `comfyui_distorch.*` importable from here on (the node module is imported later)

    def guarded(name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        if b.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            rec = fn()
        except Exception as exc:
            tb = traceback.format_exc()
            log.error("case %s failed:\n%s", name, tb)
            rec = {"case": name, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tb[-3000:]}
            b.emit(rec)
            rec = None
        finally:
            try:
                b.free_all()
            except Exception:
                log.error("free_all after %s failed:\n%s", name, traceback.format_exc())
        return rec

    # ---- (b) W ----
    W = None
    if "b" in cases and b.cuda:
        def case_b():
            import h2d_bandwidth

            m = h2d_bandwidth.measure(b.device)
            rec = {"case": "b_bandwidth", **m}
            b.emit(rec)
            return rec
        rec = guarded("b_bandwidth", case_b)
        W = rec["W_GBps"] if rec else None
    if W is None and opts.assume_w_gbps:
        W = opts.assume_w_gbps

    def bound(C: float | None, streamed: int) -> float | None:
        if C is None:
            return None
        if not streamed:
            return C
        return max(C, streamed / (W * GB)) if W else None

    def line(case: str, s: dict, streamed: int, resident: int | None, C: float | None, extra: dict) -> dict:
        bd = bound(C, streamed)
        rec = {
            "case": case,
            "s_per_it": s["s_per_it"],
            "streamed_bytes": streamed,
            "W_GBps": W,
            "C_s_per_it": C,
            "bound_s": bd,
            "measured_over_bound": s["s_per_it"] / bd if bd else None,
            "ours_over_native": None,
            **b.vram(),
            "resident_bytes": resident,
            "s_per_it_mean": s["s_per_it_mean"], "s_per_it_min": s["s_per_it_min"], "s_per_it_max": s["s_per_it_max"],
            "timed_steps": s["timed_steps"], "sample_wall_s": s["sample_wall_s"], "finite": s["finite"],
            "first_step_s": s["first_step_s"], "first_over_steady": s["first_over_steady"],
        }
        rec.update(extra)
        return rec

    # ---- the project's package (needed for plans even for the native cases' budgets) ----
    dl = None
    try:
        import_project_package()
        dl = import_project()
    except Exception as exc:
        tb = traceback.format_exc()
        log.error("importing the project failed:\n%s", tb)
        b.emit({"case": "import_project", "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tb[-3000:]})

    # ---- base model: (a), (f) resident, plans, (e) native ----
    C: dict[int, float] = {}
    plans: dict[str, tuple[Any, Any]] = {}
    base = b.load_base()
    model_bytes = base.model_size()
    targets = {"c": opts.stream_c_gb * GB, "d": opts.stream_d_gb * GB}
    fmt = lambda v: f"{v / GB:.0f}gb" if v >= GB else f"{v / GB:.2f}gb"  # noqa: E731
    label = {k: fmt(v) for k, v in targets.items()}
    if True:
        for key, target in targets.items():
            if key in cases or "e" in cases or (key == "c" and "f" in cases):
                try:
                    chosen = b.plan_for(dl, base, target)
                    plans[key] = chosen
                    req, plan = chosen["request"], chosen["plan"]
                    label[key] = fmt(plan.streamed_bytes)
                    log.info("plan %s: virtual_vram_gb=%s streamed %.2f GB, resident %.2f GB, ring %d x %.2f GB\n%s",
                             key, req.virtual_vram_gb, plan.streamed_bytes / GB, plan.resident_bytes / GB,
                             plan.ring_slots, plan.slot_bytes / GB, plan.table())
                except Exception as exc:
                    tb = traceback.format_exc()
                    log.error("plan %s failed:\n%s", key, tb)
                    b.emit({"case": f"plan_{key}", "error": f"{type(exc).__name__}: {exc}"[:2000],
                            "traceback_tail": tb[-3000:]})

    if label["c"] == label["d"]:
        label["d"] += "_d"  # tiny models: both targets can land on the same plan

    def resident_case(batch: int, name: str) -> dict:
        s = b.sample(base, batch)
        full = (not base.model.model_lowvram) and base.loaded_size() >= model_bytes
        b.reference[batch] = s.pop("output")
        C[batch] = s["s_per_it"]
        rec = line(name, s, 0, base.loaded_size(), s["s_per_it"],
                   {"batch": batch, "model_bytes": model_bytes, "fully_loaded": full})
        b.emit(rec)
        return rec

    if "a" in cases or "c" in cases or "d" in cases or "e" in cases:
        guarded("a_resident", lambda: resident_case(1, "a_resident"))
    if "f" in cases:
        guarded("f_resident_b4", lambda: resident_case(opts.batch_f, "f_resident_b4"))

    native: dict[str, float] = {}
    if "e" in cases:
        for key in ("c", "d"):
            if key not in plans:
                continue
            plan = plans[key]["plan"]
            budget = plan.device_footprint_bytes
            name = f"e_native_{label[key]}"

            def case_e(budget=budget, name=name, key=key):
                orig = mm.LoadedModel.model_load
                target_model = base.model

                def capped(self, lowvram_model_memory=0, force_patch_weights=False):
                    # Core's own partial load, with the weight budget fixed to DisTorch's device footprint
                    # instead of "whatever VRAM is free": more bytes to place = budget - already loaded.
                    if self.model is not None and self.model.model is target_model:
                        lowvram_model_memory = max(budget - self.model.loaded_size(), 1)
                    return orig(self, lowvram_model_memory, force_patch_weights)

                mm.LoadedModel.model_load = capped
                try:
                    s = b.sample(base, 1)
                    loaded = base.loaded_size()
                    offload_buffer = getattr(base.model, "model_offload_buffer_memory", None)
                    lowvram = bool(base.model.model_lowvram)
                    pinned_now = getattr(mm, "TOTAL_PINNED_MEMORY", None)
                finally:
                    mm.LoadedModel.model_load = orig
                out = s.pop("output")
                streamed = model_bytes - loaded
                native[key] = s["s_per_it"]
                rec = line(name, s, streamed, loaded, C.get(1), {
                    "batch": 1, "lowvram_model_memory": budget, "model_lowvram": lowvram,
                    "offload_buffer_bytes": offload_buffer, "core_pinned_bytes": pinned_now,
                    "max_abs_diff_vs_resident": b.compare(1, out),
                    "core": {k: settings[k] for k in ("NUM_STREAMS", "pinned_memory_on", "async_offload_on", "vram_state")},
                })
                b.emit(rec)
                return rec

            guarded(name, case_e)

    del base
    b.free_all()

    # ---- DisTorch cases ----
    def distorch_case(key: str, batches: list[tuple[int, str]]) -> None:
        if dl is None or key not in plans:
            return
        chosen = plans[key]
        req, plan = chosen["request"], chosen["plan"]
        holder: dict[str, Any] = {}

        def build():
            t0 = time.perf_counter()
            base_patcher = b.load_base()
            if chosen["source"] == "make_streaming":
                from comfyui_distorch.distorch.engine import EngineOptions

                options = EngineOptions(ring_slots=req.ring_slots, split_host_copies=not opts.single_copy_stream)
                holder["patcher"] = dl.make_streaming(base_patcher, req, options)
            else:
                from comfyui_distorch.distorch.engine import EngineOptions
                from comfyui_distorch.nodes.streaming_patcher import StreamingModelPatcher

                holder["patcher"] = StreamingModelPatcher.wrap(base_patcher, plan, EngineOptions(ring_slots=req.ring_slots),
                                                               torch.device(b.device))
            holder["wrap_s"] = time.perf_counter() - t0

        for batch, name in batches:
            def case(batch=batch, name=name):
                if "patcher" not in holder:
                    build()
                p = holder["patcher"]
                before = registry_last()
                s = b.sample(p, batch)
                out = s.pop("output")
                tel = telemetry_of(p, opts.warmup, before)
                Cb = C.get(batch)
                extra = {
                    "batch": batch,
                    "virtual_vram_gb": req.virtual_vram_gb if chosen["source"] == "make_streaming" else None,
                    "plan_source": chosen["source"],
                    "plan_note": chosen["note"],
                    "plan": {"resident_blocks": len(plan.resident), "streamed_blocks": len(plan.streamed),
                             "ring_slots": plan.ring_slots, "slot_bytes": plan.slot_bytes,
                             "device_footprint_bytes": plan.device_footprint_bytes,
                             "streamed": [n for n, _ in plan.streamed]},
                    "load_and_wrap_s": holder.get("wrap_s"),
                    "max_abs_diff_vs_resident": b.compare(batch, out),
                    "telemetry": tel,
                }
                rec = line(name, s, plan.streamed_bytes, plan.resident_bytes, Cb, extra)
                if batch == 1 and key in native:
                    rec["ours_over_native"] = s["s_per_it"] / native[key]
                    rec["native_s_per_it"] = native[key]
                if Cb:
                    rec["over_resident"] = s["s_per_it"] / Cb
                timed = (tel or {}).get("timed") or {}
                if timed.get("copy_s"):
                    # fraction of each step the copy stream was busy: near 1.0 means the link, not the
                    # schedule, is the limit (then the gap to the bound is per-copy GB/s vs W)
                    rec["copy_link_busy"] = timed["copy_s"] / s["s_per_it"]
                b.emit(rec)
                return rec

            # keep the model loaded between the batch sizes of one plan: unload only after the last
            try:
                if b.cuda:
                    torch.cuda.reset_peak_memory_stats()
                case()
            except Exception as exc:
                tb = traceback.format_exc()
                log.error("case %s failed:\n%s", name, tb)
                b.emit({"case": name, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tb[-3000:]})
        holder.clear()
        b.free_all()

    if "c" in cases or "f" in cases:
        batches = []
        if "c" in cases:
            batches.append((1, f"c_distorch_{label['c']}"))
        if "f" in cases:
            batches.append((opts.batch_f, f"f_distorch_{label['c']}_b{opts.batch_f}"))
        distorch_case("c", batches)
    if "d" in cases:
        distorch_case("d", [(1, f"d_distorch_{label['d']}")])

    summary(b)
    return 0


def summary(b: Bench) -> None:
    rows = [("case", "s/it", "bound", "x bound", "x native", "streamed GB", "peak GB", "diff")]
    for name, r in b.results.items():
        if "s_per_it" not in r:
            if "error" in r:
                rows.append((name, "ERROR", r["error"][:60], "", "", "", "", ""))
            continue
        f = lambda v, fmt: (fmt.format(v) if isinstance(v, (int, float)) else "-")  # noqa: E731
        rows.append((name, f(r["s_per_it"], "{:.3f}"), f(r.get("bound_s"), "{:.3f}"),
                     f(r.get("measured_over_bound"), "{:.2f}"), f(r.get("ours_over_native"), "{:.2f}"),
                     f((r.get("streamed_bytes") or 0) / GB, "{:.2f}"),
                     f((r.get("peak_vram_bytes") or 0) / GB, "{:.2f}"), f(r.get("max_abs_diff_vs_resident"), "{:.2g}")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-root", type=Path, default=REPO / ".host" / "comfyui")
    ap.add_argument("--model", type=Path,
                    default=Path("/tmp/models/diffusion_models/distorch-flux1-dev-full.safetensors"))
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size/8)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each sampling run")
    ap.add_argument("--tokens", type=int, default=512, help="text tokens of the random context")
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-f", type=int, default=4, help="batch of the compute-bound case (f)")
    ap.add_argument("--stream-c-gb", type=float, default=13.0, help="target streamed GB of case (c)")
    ap.add_argument("--stream-d-gb", type=float, default=22.0, help="target streamed GB of case (d)")
    ap.add_argument("--assume-w-gbps", type=float, default=None, help="W when case b is not run")
    ap.add_argument("--ring-slots", type=int, default=2, help="staging slots of the DisTorch cases")
    ap.add_argument("--single-copy-stream", action="store_true",
                    help="copy each host block on one stream instead of two halves on two streams")
    ap.add_argument("--keep-head-blocks", type=int, default=1, help="leading blocks the DisTorch plans keep resident")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--tiny", action="store_true",
                    help="harness check: tiny Flux, 256 px, 1+2 steps, batch 2 for (f), small stream targets")
    ap.add_argument("--cpu", dest="tiny_cpu", action="store_true", help="run on the CPU (ComfyUI --cpu)")
    opts = ap.parse_args(argv)
    if opts.tiny:
        if opts.model == ap.get_default("model"):
            opts.model = REPO / ".host" / "base" / "models" / "diffusion_models" / "distorch-tiny-flux.safetensors"
        opts.size, opts.steps, opts.warmup, opts.batch_f, opts.tokens = 256, 2, 1, 2, 64
        if opts.stream_c_gb == ap.get_default("stream_c_gb"):
            opts.stream_c_gb = 0.3
        if opts.stream_d_gb == ap.get_default("stream_d_gb"):
            opts.stream_d_gb = 0.6
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
