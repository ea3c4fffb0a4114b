"""The GGUF cases: per quant type, all-resident (C_q), the dequantization alone, streamed with 16 and 6 GiB of VRAM
free, and optionally ComfyUI-GGUF's own loader on the same file (see bench/README.md, "bench_gguf.py").

Imports the project and ComfyUI's modules at the top: import this module only after harness.setup_comfy() and
harness.import_project_package().
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from comfyui_distorch.distorch.budget import StreamRequest
from comfyui_distorch.distorch.quant import ScratchPool
from comfyui_distorch.nodes import auto_budget, comfy_adapter, gguf_loaders
from comfyui_distorch.nodes.quantized_weights import logical_shape, quant_spec

from flux import plans, report
from flux.occupy import occupy
from flux.harness import GB, Bench, StepClock, core_settings, environment

log = logging.getLogger("bench")
GIB = 1 << 30
MARGIN = 512 << 20  # CUDA context, caching-allocator slack, cuBLAS workspaces: kept free beside the plan


@dataclasses.dataclass
class Run:
    opts: argparse.Namespace
    bench: Bench
    reporter: report.Reporter
    W: float | None = None
    C: dict[str, float] = dataclasses.field(default_factory=dict)  # case key -> s/it of the resident reference
    bf16: float | None = None

    def guarded(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        self.bench.reset_peak()
        try:
            record = fn()
            if record is not None:
                self.reporter.emit(record)
            return record
        except Exception as exc:
            self.reporter.error(name, exc)
            return None
        finally:
            self.bench.free_all()


def gguf_path(opts: argparse.Namespace, qtype: str) -> Path:
    return opts.models_dir / "diffusion_models" / opts.gguf_name.format(qtype=qtype)


def load_gguf(run: Run, qtype: str, virtual_vram_gb: float | None) -> Any:
    """The node's path: read, build through ComfyUI with the GGUF operations, make_streaming."""
    patcher, scratch = gguf_loaders.load_gguf_diffusion_model(str(gguf_path(run.opts, qtype)))
    request = StreamRequest(compute_device=run.bench.device, virtual_vram_gb=virtual_vram_gb, donor_device="cpu",
                            ring_slots=run.opts.ring_slots)
    return gguf_loaders.stream_gguf(patcher, scratch, request)


def reserve_bytes(model: Any) -> int:
    """What the GGUF node keeps free beside the weights: activations of a batched forward + dequant scratch."""
    return auto_budget.default_reserve(model) + gguf_loaders.dequant_scratch_bytes(model)


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------
def bandwidth(run: Run) -> dict[str, Any]:
    import h2d_bandwidth  # bench/h2d_bandwidth.py, on sys.path through the entry point

    rec = {"case": "b_bandwidth", **h2d_bandwidth.measure(run.bench.device)}
    run.W = rec["W_GBps"]
    return rec


def bf16_resident(run: Run) -> dict[str, Any] | None:
    import comfy.sd

    if not run.opts.bf16_model.is_file():
        log.warning("no bf16 model at %s: no bf16 reference step", run.opts.bf16_model)
        return None
    patcher = comfy.sd.load_diffusion_model(str(run.opts.bf16_model))
    sampled = run.bench.sample(patcher, 1)
    sampled.pop("output")
    run.bf16 = sampled["s_per_it"]
    return report.case_record(f"bf16_resident{cfg_suffix(run.opts)}", sampled, 0, patcher.loaded_size(), run.bf16, run.W, run.bench.vram(),
                              {"model": str(run.opts.bf16_model)})


def resident(run: Run, qtype: str) -> dict[str, Any]:
    patcher = load_gguf(run, qtype, 0.0)
    sampled = run.bench.sample(patcher, 1)
    run.bench.reference[qtype] = sampled.pop("output")
    C = run.C[qtype] = sampled["s_per_it"]
    extra = {"quant": qtype, "raw_model_bytes": patcher.model_size(), "plan": plans.summary(patcher.distorch.plan),
             "dequant": dequant_only(patcher)}
    extra["dequant_s_per_step"] = extra["dequant"]["seconds"]
    if run.bf16:
        extra.update(bf16_s_per_it=run.bf16, over_bf16_resident=C / run.bf16,
                     dequant_over_bf16_step=extra["dequant_s_per_step"] / run.bf16)
    return report.case_record(f"{qtype}_resident{cfg_suffix(run.opts)}", sampled, 0, patcher.loaded_size(), C, run.W, run.bench.vram(),
                              extra)


def dequant_only(patcher: Any) -> dict[str, Any]:
    """Every quantized weight dequantized once (what one forward at cfg 1 dequantizes), on the compute stream,
    into a scratch pool, in the model's compute dtype: the best of 3 passes, timed with CUDA events."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])  # still loaded after sampling; this only makes sure
    model = patcher.model
    dtype = comfy_adapter.compute_dtype(model)
    weights = [p for p in model.parameters() if quant_spec(p) is not None]
    pool = ScratchPool()
    clock = StepClock(weights[0].device.type == "cuda") if weights else StepClock(False)
    times = []
    for _ in range(4):
        start = clock.mark()
        for p in weights:
            pool.dequantize(p.data, quant_spec(p), dtype).view(logical_shape(p))
        end = clock.mark()
        if clock.cuda:
            end.synchronize()
        times.append(clock.seconds(start, end))
    elements = sum(quant_spec(p).numel for p in weights)
    best = min(times[1:])
    return {"seconds": best, "weights": len(weights), "elements": elements, "Gelem_per_s": elements / best / 1e9,
            "dtype": str(dtype), "scratch_bytes": pool.nbytes}


def fitting_virtual_vram_gb(run: Run, qtype: str, free_bytes: int) -> tuple[float, dict[str, Any]]:
    """The node's virtual_vram_gb whose plan (resident + ring) leaves the reserve and a margin free."""
    patcher, _ = gguf_loaders.load_gguf_diffusion_model(str(gguf_path(run.opts, qtype)))
    model_bytes = patcher.model_size()
    reserve = reserve_bytes(patcher.model)
    footprint = free_bytes - reserve - MARGIN
    virtual = max(0.0, (model_bytes - footprint) / GB)
    return round(virtual + 0.001, 3), {"model_bytes": model_bytes, "reserve_bytes": reserve,
                                       "target_footprint_bytes": footprint}


def cfg_suffix(opts: argparse.Namespace) -> str:
    return "" if opts.cfg == 1.0 else f"_cfg{opts.cfg:g}"


def sample_prompts(run: Run, patcher: Any) -> dict[str, Any]:
    """``--prompts`` sampling runs with the model left loaded; the last one's numbers, the earlier s/it beside."""
    earlier = []
    for prompt in range(run.opts.prompts):
        if prompt:
            earlier.append(sampled["s_per_it"])
            run.bench.reset_peak()
        sampled = run.bench.sample(patcher, 1)
    sampled["prompts"] = run.opts.prompts
    sampled["earlier_prompts_s_per_it"] = earlier
    return sampled


def prompt_fields(sampled: dict[str, Any]) -> dict[str, Any]:
    return {"prompts": sampled.get("prompts", 1), "earlier_prompts_s_per_it": sampled.get("earlier_prompts_s_per_it", [])}


def streamed(run: Run, qtype: str, free_gib: float) -> dict[str, Any]:
    free_bytes = int(free_gib * GIB)
    if run.opts.budget == "auto":
        virtual, fit = None, {"budget": "auto"}
    else:
        virtual, fit = fitting_virtual_vram_gb(run, qtype, free_bytes)
    run.bench.free_all()
    occupation = occupy(free_bytes, run.bench.device)
    hog, hog_bytes = occupation.block, occupation.occupied_bytes
    try:
        run.bench.reset_peak()
        t0 = time.perf_counter()
        patcher = load_gguf(run, qtype, virtual)
        build_s = time.perf_counter() - t0
        before = report_stats()
        sampled = sample_prompts(run, patcher)
        plan = patcher.distorch.plan  # after sampling: the automatic budget plans at each load
        out = sampled.pop("output")
        after = report_stats()
        vram = run.bench.vram()
        peak = vram["peak_vram_bytes"]
        extra = {"quant": qtype, "free_gib": free_gib, "virtual_vram_gb": virtual, "fit": fit, "hog_bytes": hog_bytes,
                 "peak_vram_without_hog_bytes": peak - hog_bytes if peak is not None else None,
                 "plan": plans.summary(plan), "load_and_wrap_s": build_s,
                 "max_abs_diff_vs_resident": diff(run.bench.reference.get(qtype), out),
                 "telemetry": report.telemetry(after if after is not before else None, run.opts.warmup),
                 **prompt_fields(sampled)}
        C = run.C.get(qtype)
        if C:
            extra["over_resident"] = sampled["s_per_it"] / C
        return report.case_record(f"{qtype}_stream_{free_gib:g}gib_free{cfg_suffix(run.opts)}", sampled, plan.streamed_bytes,
                                  plan.resident_bytes, C, run.W, vram, extra)
    finally:
        del hog, occupation  # the occupying allocation goes back


def report_stats() -> dict[str, Any] | None:
    from comfyui_distorch.distorch.registry import REGISTRY

    recent = REGISTRY.recent_prompt_stats()
    return recent[-1] if recent else None


def diff(reference: torch.Tensor | None, out: torch.Tensor) -> float | None:
    if reference is None or reference.shape != out.shape:
        return None
    return float((reference - out).abs().max())


# --------------------------------------------------------------------------------------------------
# ComfyUI-GGUF baseline (a fetched copy at --comfyui-gguf; never part of this repository)
# --------------------------------------------------------------------------------------------------
BASELINE_MODULE = "comfyui_gguf_baseline"


def comfyui_gguf_loader(path: Path) -> Any:
    """ComfyUI-GGUF's UnetLoaderGGUF class, imported (once) from a checkout at ``path``."""
    module = sys.modules.get(BASELINE_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(BASELINE_MODULE, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[BASELINE_MODULE] = module
        spec.loader.exec_module(module)
    return module.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]


def comfyui_gguf(run: Run, qtype: str, free_gib: float | None) -> dict[str, Any]:
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", str(run.opts.models_dir / "diffusion_models"))
    loader = comfyui_gguf_loader(run.opts.comfyui_gguf)
    occupation = occupy(int(free_gib * GIB) if free_gib else None, run.bench.device)
    hog, hog_bytes = occupation.block, occupation.occupied_bytes
    try:
        run.bench.reset_peak()
        (patcher,) = loader().load_unet(gguf_path(run.opts, qtype).name)
        sampled = sample_prompts(run, patcher)
        out = sampled.pop("output")
        vram = run.bench.vram()
        peak = vram["peak_vram_bytes"]
        name = f"{qtype}_comfyui_gguf_" + (f"{free_gib:g}gib_free" if free_gib else "resident") + cfg_suffix(run.opts)
        loaded = patcher.loaded_size()
        extra = {"quant": qtype, "free_gib": free_gib, "hog_bytes": hog_bytes, "loaded_bytes": loaded,
                 "peak_vram_without_hog_bytes": peak - hog_bytes if peak is not None else None,
                 "max_abs_diff_vs_ours": diff(run.bench.reference.get(qtype), out), **prompt_fields(sampled)}
        C = run.C.get(qtype)
        if C:
            extra["over_our_resident"] = sampled["s_per_it"] / C
        return report.case_record(name, sampled, max(patcher.model_size() - loaded, 0), loaded, C, run.W, vram, extra)
    finally:
        del hog, occupation  # the occupying allocation goes back


# --------------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------------
def run_all(opts: argparse.Namespace, comfy: dict[str, Any]) -> int:
    bench = Bench(opts, comfy["mm"])
    run = Run(opts, bench, report.Reporter(opts.out))
    env = environment(opts, bench.cuda, core_settings(comfy["mm"], comfy["args"]))
    print(json.dumps({"case": "env", **env}, default=report.json_default), flush=True)
    if bench.cuda:
        run.guarded("b_bandwidth", lambda: bandwidth(run))
    for cfg in opts.cfgs:
        opts.cfg = cfg  # Bench.sample's default cfg; case names of cfg != 1 end in _cfg<x>
        run_round(run, bench)
    report.summary(run.reporter.results)
    run.reporter.close()
    return 0


def run_round(run: Run, bench: Bench) -> None:
    """Every case at one cfg: the bf16 reference step, then per quant type resident, streamed, baseline."""
    opts = run.opts
    run.guarded("bf16_resident", lambda: bf16_resident(run))
    for qtype in opts.quants.split(","):
        if not gguf_path(opts, qtype).is_file():
            run.reporter.error(f"{qtype}_resident", FileNotFoundError(gguf_path(opts, qtype)))
            continue
        run.guarded(f"{qtype}_resident{cfg_suffix(opts)}", lambda q=qtype: resident(run, q))
        if not bench.cuda:  # "VRAM free" means nothing on the CPU: the harness check stops here
            continue
        for free_gib in opts.free_gib:
            run.guarded(f"{qtype}_stream_{free_gib:g}gib_free{cfg_suffix(opts)}", lambda q=qtype, f=free_gib: streamed(run, q, f))
        if opts.comfyui_gguf:
            for free_gib in ((None,) if opts.baseline_resident else ()) + tuple(opts.free_gib):
                run.guarded(f"{qtype}_comfyui_gguf{cfg_suffix(opts)}", lambda q=qtype, f=free_gib: comfyui_gguf(run, q, f))

