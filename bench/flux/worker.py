"""One case of bench/compare_hosts.py, in a process of its own: free VRAM is fixed before the host loads anything.

Order matters: (1) occupy the card so exactly the target is free (one allocation), (2) import the host's
ComfyUI (Dynamic VRAM on where asked and present), (3) load the model file (core loader; `make_streaming` on
it for ours), (4) per cfg: ``prompts`` sampling runs of warmup + timed steps, one JSON line each appended to
the result file. Between two cfgs every model is unloaded, so each cfg's first run includes the load to the
device; later runs of the same cfg find the model loaded, as a user's next prompt does (ours re-plans then,
paced by the compute it measured in the first run). The resident case saves its latents; the later cases of
the same host and cfg compare against them.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import harness, observe, report
from .dynamic_vram import aimdo_vram_bytes, memory_path
from .occupy import GIB, Occupation, occupy

log = logging.getLogger("bench")
MODES = ("resident", "core", "ours")


@dataclass
class WorkerSpec:
    case: str  # name prefix of this worker's lines: host/mode[/free]; "/cfg<x>" is appended per run
    host: str  # ComfyUI version
    comfy_root: str
    mode: str  # resident | core | ours
    cfgs: list[float]
    model: str
    reference_dir: str  # resident latents: written by the resident case, read by the others
    result_path: str  # JSON lines, appended as they are produced
    free_gib: float | None = None  # free VRAM to leave (None: nothing occupied)
    ours_budget: str | None = None  # "auto" (virtual_vram_gb=None) or GB
    dynamic_vram: bool = True  # on where this ComfyUI has it
    cpu: bool = False
    size: int = 1024
    steps: int = 5
    warmup: int = 2
    tokens: int = 512
    seed: int = 42
    sampler: str = "euler"
    scheduler: str = "simple"
    ring_slots: int | None = None  # None: StreamRequest's default
    keep_head_blocks: int | None = None
    prompts: int = 1  # sampling runs per cfg (the model stays loaded between them)
    profile: list[str] | None = None  # runs whose name contains one of these are profiled (bench/flux/profiling.py)
    profile_dir: str | None = None  # where their traces go

    def profile_path(self, run: str) -> Path | None:
        if not self.profile_dir or not any(p in run for p in self.profile or ()):
            return None
        return Path(self.profile_dir) / ("trace-" + run.replace("/", "_") + ".json.gz")

    def run_name(self, cfg: float, prompt: int = 1) -> str:
        return f"{self.case}/cfg{cfg:g}" + (f"/prompt{prompt}" if prompt > 1 else "")

    def reference_path(self, cfg: float, prompt: int = 1) -> Path:
        # Per prompt number: on ComfyUI 0.33 a model's first sampling run at cfg 1 gives other bits than its
        # later runs, in every mode alike (core's too), so each run is compared with the resident run of its rank.
        return Path(self.reference_dir) / f"resident_{self.host}_cfg{cfg:g}_prompt{prompt}.pt"


def bench_options(spec: WorkerSpec) -> argparse.Namespace:
    """The options harness.Bench reads."""
    return argparse.Namespace(model=Path(spec.model), device="cuda:0", tiny_cpu=spec.cpu, tokens=spec.tokens,
                              size=spec.size, steps=spec.steps, warmup=spec.warmup, cfg=spec.cfgs[0],
                              sampler=spec.sampler, scheduler=spec.scheduler, seed=spec.seed)


def stream_request(spec: WorkerSpec, device: str) -> Any:
    """The node's request: virtual_vram_gb None = auto (plan from the free VRAM at load)."""
    from comfyui_distorch.distorch.budget import StreamRequest

    budget = None if spec.ours_budget == "auto" else float(spec.ours_budget)
    extra = {k: v for k, v in (("ring_slots", spec.ring_slots), ("keep_head_blocks", spec.keep_head_blocks))
             if v is not None}
    return StreamRequest(compute_device=device, virtual_vram_gb=budget, donor_device="cpu", **extra)


def make_ours(spec: WorkerSpec, base: Any, device: str) -> tuple[Any, dict[str, Any]]:
    """make_streaming on the freshly loaded core patcher, as the DisTorch loader node does."""
    dl = harness.import_project()
    request = stream_request(spec, device)
    t0 = time.perf_counter()
    try:
        patcher = dl.make_streaming(base, request)
    except Exception as exc:
        what = "auto budget (virtual_vram_gb=None)" if request.virtual_vram_gb is None else "make_streaming"
        raise RuntimeError(f"ours, {what}: {type(exc).__name__}: {exc}") from exc
    return patcher, {"wrap_s": time.perf_counter() - t0, "virtual_vram_gb": request.virtual_vram_gb,
                     "ring_slots": request.ring_slots, "keep_head_blocks": request.keep_head_blocks}


def plan_fields(patcher: Any) -> dict[str, Any]:
    from . import plans

    state = patcher.distorch
    plan = state.plan
    auto = state.auto
    return {"streamed_bytes": plan.streamed_bytes, "streamed_source": "plan", "resident_bytes": plan.resident_bytes,
            "plan": {**plans.summary(plan), "streamed_bytes": plan.streamed_bytes,
                     "resident_bytes": plan.resident_bytes, "ring_bytes": plan.ring_bytes,
                     "activation_reserve_bytes": plan.activation_reserve_bytes, "budget_raised": plan.budget_raised,
                     "auto_reserve_reason": auto.reserve_reason if auto is not None else None,
                     "measured_activation_peak_bytes": state.engine.activation_peak_bytes(),
                     "measured_peak_batch": state.engine.activation_peak_batch(), "pacing": plan.pacing,
                     "batch_credit_bytes": auto.batch_credit_bytes if auto is not None else 0},
            "pipeline_inputs": pipeline_inputs(plan, auto),
            "engine_load": state.engine.load_stats.as_dict(),
            "plan_table": plan.table()}


def pipeline_inputs(plan: Any, auto: Any) -> dict[str, Any] | None:
    """What distorch.pipeline_model replays this plan with (the driver adds W and C): per block in execution
    order its measured compute and its streamed bytes (0 when resident), the slots. None before a forward of this
    load was timed block by block."""
    seconds = getattr(auto, "block_seconds", None)
    if seconds is None:
        return None
    streamed = set(plan.streamed_names)
    return {"block_seconds": list(seconds), "slot_bytes": plan.slot_bytes, "ring_slots": plan.ring_slots,
            "streamed_bytes": [size if name in streamed else 0 for name, size in plan.block_sizes],
            "block_bytes": [size for _, size in plan.block_sizes]}


def core_fields(patcher: Any) -> dict[str, Any]:
    """Core's own bookkeeping after sampling (model still loaded): what it kept on the device; the rest of the
    model is what it streams per forward."""
    model_bytes, loaded = patcher.model_size(), patcher.loaded_size()
    return {"streamed_bytes": max(model_bytes - loaded, 0), "streamed_source": "core model_size - loaded_size",
            "resident_bytes": loaded, "core_lowvram": bool(getattr(patcher.model, "model_lowvram", False)),
            "core_offload_buffer_bytes": getattr(patcher.model, "model_offload_buffer_memory", None)}


def compare_to_reference(spec: WorkerSpec, cfg: float, out: torch.Tensor, prompt: int = 1) -> dict[str, Any]:
    """The resident case saves its latent; every other case compares with it (same host, cfg, seed, prompt)."""
    path = spec.reference_path(cfg, prompt)
    if spec.mode == "resident":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        return {"max_abs_diff_vs_resident": 0.0, "bit_identical_to_resident": True}
    if not path.is_file():
        return {"max_abs_diff_vs_resident": None, "bit_identical_to_resident": None}
    ref = torch.load(path)
    if ref.shape != out.shape:
        return {"max_abs_diff_vs_resident": None, "bit_identical_to_resident": False}
    return {"max_abs_diff_vs_resident": float((ref - out).abs().max()),
            "bit_identical_to_resident": bool(torch.equal(ref, out))}


class Worker:
    def __init__(self, spec: WorkerSpec, occupation: Occupation, comfy: dict[str, Any]) -> None:
        self.spec = spec
        self.occ = occupation
        self.comfy = comfy
        self.bench = harness.Bench(bench_options(spec), comfy["mm"])
        self.memory = observe.DeviceMemory(self.bench.device if self.bench.cuda else None)
        self.settings = harness.core_settings(comfy["mm"], comfy["args"])
        self.common: dict[str, Any] = {}  # load timings and sizes, on every line
        self.loader_class: str | None = None  # the patcher class core's loader returned

    def load(self) -> Any:
        """The model file through core's loader, then ours on top of it; load timings into self.common."""
        self.memory.sample()
        self.common["free_before_load_bytes"] = self.memory.min_free
        t0 = time.perf_counter()
        base = self.bench.load_base()
        self.common["model_file_load_s"] = time.perf_counter() - t0
        self.common["model_bytes"] = base.model_size()
        self.loader_class = type(base).__name__
        if self.spec.mode != "ours":
            return base
        patcher, info = make_ours(self.spec, base, self.bench.device)
        self.common.update(info)
        return patcher

    def sample(self, patcher: Any, cfg: float, index: int, prompt: int = 1) -> dict[str, Any]:
        from .cases import newest_prompt_stats

        if index > 0 and prompt == 1:
            self.bench.free_all()  # the next cfg's first step includes the load to the device again
        self.memory.reset()
        self.bench.reset_peak()
        before = newest_prompt_stats() if self.spec.mode == "ours" else None
        run = self.spec.run_name(cfg, prompt)
        sampled = self.bench.sample(patcher, 1, cfg=cfg, monitor=self.memory, profile=self.spec.profile_path(run))
        out = sampled.pop("output")
        rec = self.head(cfg, patcher, prompt)
        rec.update(sampled)
        rec["load_kind"] = "loaded" if prompt > 1 else "first" if index == 0 else "reload"
        rec["cond_uncond_batched"] = observe.cond_uncond_batched(sampled["forward_batches"][self.spec.warmup:], cfg)
        rec.update(self.memory_fields())
        rec.update(plan_fields(patcher) if self.spec.mode == "ours" else core_fields(patcher))
        if self.spec.mode == "ours":
            after = newest_prompt_stats()
            rec["telemetry"] = report.telemetry(after if after is not before else None, self.spec.warmup)
        trace = self.spec.profile_path(run)
        if trace is not None:
            from .profiling import gap_report, load_trace

            rec["profile"] = {"trace": trace.name, **gap_report(load_trace(trace))}
        rec["latent_sha256"] = observe.latent_sha256(out)
        rec.update(compare_to_reference(self.spec, cfg, out, prompt))
        return rec

    def head(self, cfg: float, patcher: Any = None, prompt: int = 1) -> dict[str, Any]:
        """The fields every line of this worker starts with."""
        s = self.spec
        return {"case": s.run_name(cfg, prompt), "host": s.host, "mode": s.mode, "ours_budget": s.ours_budget,
                "free_gib_target": s.free_gib, "cfg": cfg, "prompt": prompt, **self.occ.as_dict(), **self.common,
                "memory_path": {**memory_path(patcher), "loader_patcher_class": self.loader_class,
                                "dynamic_vram_note": self.comfy["dynamic_vram_note"]},
                "core": {k: self.settings.get(k) for k in ("NUM_STREAMS", "pinned_memory_on", "vram_state",
                                                          "PYTORCH_CUDA_ALLOC_CONF")}}

    def memory_fields(self) -> dict[str, Any]:
        if not self.bench.cuda:
            return {"peak_device_used_bytes": None, "torch_peak_allocated_bytes": None, "aimdo_vram_bytes": None}
        return {"peak_device_used_bytes": self.memory.peak_used(self.occ.occupied_bytes),
                "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated() - self.occ.occupied_bytes,
                "aimdo_vram_bytes": aimdo_vram_bytes(), "device_total_bytes": self.memory.total}


def error_record(spec: WorkerSpec, cfg: float, exc: BaseException, prompt: int = 1) -> dict[str, Any]:
    tb = traceback.format_exc()
    log.error("%s failed:\n%s", spec.run_name(cfg, prompt), tb)
    return {"case": spec.run_name(cfg, prompt), "host": spec.host, "mode": spec.mode, "ours_budget": spec.ours_budget,
            "free_gib_target": spec.free_gib, "cfg": cfg, "prompt": prompt, "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback_tail": tb[-3000:]}


def run(spec: WorkerSpec) -> int:
    """Every cfg gets a line (a result or an error); exit status 1 if any failed."""
    out = open(spec.result_path, "a")

    def emit(rec: dict[str, Any]) -> None:
        out.write(json.dumps(rec, default=report.json_default) + "\n")
        out.flush()

    try:
        occ = occupy(None if spec.free_gib is None or spec.cpu else int(spec.free_gib * GIB))
        comfy = harness.setup_comfy(Path(spec.comfy_root), cpu=spec.cpu, dynamic_vram=spec.dynamic_vram)
        harness.import_project_package()
        worker = Worker(spec, occ, comfy)
        patcher = worker.load()
    except Exception as exc:
        for cfg in spec.cfgs:
            emit(error_record(spec, cfg, exc))
        return 1
    failed = 0
    for index, cfg in enumerate(spec.cfgs):
        for prompt in range(1, spec.prompts + 1):
            try:
                emit(worker.sample(patcher, cfg, index, prompt))
            except Exception as exc:
                failed += 1
                emit(error_record(spec, cfg, exc, prompt))
    out.close()
    return 1 if failed else 0


def main(spec_json: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = WorkerSpec(**json.loads(spec_json))
    if spec.mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}, got {spec.mode!r}")
    log.info("worker %s: %s", spec.case, json.dumps(asdict(spec)))
    return run(spec)
