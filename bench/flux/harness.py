"""ComfyUI in-process, the project as a package, and the Bench: the model, conditioning, timed sampling, VRAM."""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
GB = 1e9
PKG = "comfyui_distorch"
log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------------
# set-up: ComfyUI in-process, the project as a package
# --------------------------------------------------------------------------------------------------
def setup_comfy(root: Path, cpu: bool, dynamic_vram: bool = False) -> dict[str, Any]:
    """Import ComfyUI the way its own tests do, without argv parsing; CUDA unless `cpu`. `dynamic_vram`: switch
    Dynamic VRAM on as 0.33's main.py does, where this ComfyUI has it (`dynamic_vram` in the result says
    whether it really is on, `dynamic_vram_note` why not); a host that has it but was not asked runs the
    legacy path (--disable-dynamic-vram)."""
    from . import dynamic_vram as dyn

    root = root.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    args = comfy.cli_args.args
    if cpu:
        args.cpu = True
    wanted = dynamic_vram and not cpu and dyn.generation_present()
    if not wanted:
        dyn.disable(args)
    control_ready = dyn.init_control(args) if wanted else False
    import comfy.model_management as mm
    import utils.extra_config  # noqa: F401  (before `nodes`, else nodes_images fails: 'utils' is not a package)
    import nodes  # noqa: F401  (top-level ComfyUI nodes: our loaders look core nodes up here)
    import comfy.sample  # noqa: F401
    import comfy.sd  # noqa: F401

    enabled, note = False, "not asked" if not dynamic_vram else "this ComfyUI has no Dynamic VRAM"
    if cpu and dynamic_vram:
        note = "cpu: Dynamic VRAM runs only on a GPU"
    elif wanted and not control_ready:
        note = "comfy_aimdo.control.init failed"
    elif wanted:
        enabled, note = dyn.enable(mm, args)
    return {"mm": mm, "args": args, "dynamic_vram": enabled, "dynamic_vram_note": note}


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


def import_project() -> ModuleType:
    """`comfyui_distorch.nodes.distorch_loaders`, the way ComfyUI's custom-node loader would reach it."""
    import_project_package()
    return importlib.import_module(f"{PKG}.nodes.distorch_loaders")


def core_settings(mm: Any, args: Any) -> dict[str, Any]:
    """Which of core's offload features were active. These are facts about whichever ComfyUI --comfy-root
    holds (0.3.75 names), not our API: a name another ComfyUI lacks is reported as None."""
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


def environment(opts: argparse.Namespace, cuda: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """The `env` line: versions, the GPU, the sampling settings and core's offload settings."""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": str(opts.model),
        "size": opts.size, "steps": opts.steps, "warmup": opts.warmup, "cfg": opts.cfg,
        "sampler": opts.sampler, "scheduler": opts.scheduler, "core": settings,
    }


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------
class StepClock:
    """Marks on the compute stream: CUDA events (recording one adds no host synchronisation), or
    perf_counter readings on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream())
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


def step_stats(per_step: list[float], first_step: float | None, warmup: int) -> dict[str, Any]:
    """s/it over the timed steps. per_step[k] is step k+1's time, so the timed steps start at warmup - 1."""
    timed = per_step[warmup - 1:] if warmup >= 1 else per_step
    median = statistics.median(timed)
    return {
        "s_per_it": median,
        "s_per_it_mean": statistics.fmean(timed),
        "s_per_it_min": min(timed),
        "s_per_it_max": max(timed),
        "first_step_s": first_step,  # model load excluded: from sampling start (model loaded) to step 1's end
        "first_over_steady": first_step / median if first_step else None,
        "timed_steps": len(timed),
        "warmup_steps": warmup,
    }


# --------------------------------------------------------------------------------------------------
# the model, conditioning, sampling
# --------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, opts: argparse.Namespace, mm: Any) -> None:
        self.o = opts
        self.mm = mm
        self.cuda = torch.cuda.is_available() and not opts.tiny_cpu
        self.device = opts.device if self.cuda else "cpu"
        self.reference: dict[int, torch.Tensor] = {}  # batch -> all-resident output latent (cpu), for bit-equality

    def free_all(self) -> None:
        """Between cases: every model unloaded, caches emptied, the peak-memory counter reset."""
        self.mm.unload_all_models()
        self.mm.cleanup_models()
        gc.collect()
        self.mm.soft_empty_cache()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def vram(self) -> dict[str, int | None]:
        if not self.cuda:
            return {"peak_vram_bytes": None, "vram_now_bytes": None}
        return {"peak_vram_bytes": torch.cuda.max_memory_allocated(), "vram_now_bytes": torch.cuda.memory_allocated()}

    def load_base(self) -> Any:
        """A freshly loaded core ModelPatcher of --model (not yet on the compute device)."""
        import comfy.sd

        t0 = time.perf_counter()
        patcher = comfy.sd.load_diffusion_model(str(self.o.model))
        log.info("loaded %s in %.1f s (%s, %.2f GB)", self.o.model.name, time.perf_counter() - t0,
                 patcher.model_dtype(), patcher.model_size() / GB)
        return patcher

    def conditioning(self, patcher: Any) -> tuple[list, list]:
        """Seeded random T5 context and pooled CLIP of the model's real widths, guidance 3.5."""
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

    def sample(self, patcher: Any, batch: int, cfg: float | None = None, monitor: Any = None,
               profile: Path | None = None) -> dict[str, Any]:
        """One sampling run of warmup + timed steps; per-step times from marks recorded in the callback.
        `cfg` overrides --cfg; `monitor.sample()` (observe.DeviceMemory) runs after the load and every step.
        Besides step_stats: `first_step_incl_load_s` (from the moment sampling is asked for), `load_s`,
        `first_forward_s`, `forwards_per_step` and `forward_batches` (observe.ForwardLog). With `profile`, the
        run is recorded into that chrome trace (bench/flux/profiling.py; the profiler slows the host side)."""
        import comfy.sample

        from .observe import ForwardLog
        from .profiling import FORWARD_RANGE, profiled

        o = self.o
        cfg = o.cfg if cfg is None else cfg
        latent = torch.zeros(batch, 16, o.size // 8, o.size // 8)
        noise = comfy.sample.prepare_noise(latent, o.seed)
        positive, negative = self.conditioning(patcher)
        clock = StepClock(self.cuda)
        forwards = ForwardLog(clock)
        marks: list[Any] = []

        def forward(apply_model, args):
            # The first forward starts after the model load: the load-excluded first step is timed from here.
            first = forwards.first_start is None
            forwards.started(len(marks), args["input"].shape[0])
            if first and monitor is not None:
                monitor.sample()
            with torch.profiler.record_function(FORWARD_RANGE):
                out = apply_model(args["input"], args["timestep"], **args["c"])
            forwards.finished()
            return out

        def step_done(*_):
            marks.append(clock.mark())
            if monitor is not None:
                monitor.sample()

        patcher = patcher.clone()
        patcher.set_model_unet_function_wrapper(forward)
        ask, t0 = clock.mark(), time.perf_counter()
        with profiled(profile):
            out = comfy.sample.sample(patcher, noise, o.warmup + o.steps, cfg, o.sampler, o.scheduler, positive,
                                      negative, latent, callback=step_done, disable_pbar=True, seed=o.seed)
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        per_step = [clock.seconds(a, b) for a, b in zip(marks, marks[1:])]
        first_step = clock.seconds(forwards.first_start, marks[0]) if forwards.first_start is not None else None
        parts = forwards.summary(ask, t0, marks, o.warmup)
        parts["first_step_incl_load_s"] = parts.pop("first_step_s")
        return {**step_stats(per_step, first_step, o.warmup), **parts, "sample_wall_s": wall,
                "output": out.float().cpu(), "finite": bool(torch.isfinite(out).all())}

    def compare(self, batch: int, out: torch.Tensor) -> float | None:
        """Max |difference| from the all-resident output of the same batch (same seed); None without one."""
        ref = self.reference.get(batch)
        if ref is None or ref.shape != out.shape:
            return None
        return float((ref - out).abs().max())
