#!/usr/bin/env python3
"""Ours against ComfyUI core on two ComfyUI hosts, in one run, at equal free VRAM.

Per host (default 0.33.0 with Dynamic VRAM on, then 0.3.75 native) and cfg (1, 3.5): all-resident (C),
then core and ours (DisTorch, auto budget) with the rest of the card occupied so that 16 GiB and 6 GiB are
free. The full-size Flux.1-dev-shaped bf16 model, 1024x1024, euler, simple, warm-up 2 + 5 timed steps,
seeded random T5/CLIP conditioning (cond AND a different uncond at cfg 3.5). W (pinned host->GPU GB/s) is
measured once. Every case runs in a worker process of its own (free VRAM must be fixed before the host
loads anything): `bench/flux/worker.py`. JSON lines go to stdout and --out as each case ends: per case
s/it, measured_over_bound = s/it / max(C, streamed / W), ours_over_core (same host, free VRAM, cfg; and per
host), first_step_ratio (first step from the moment sampling is asked for, model load included), forwards
per step and their batches, peak device memory, plan + telemetry (ours), latent sha256 and max |diff| to
all-resident, which memory path was active. The last line (`summary`) checks the issue's targets; tables
follow. A benchmark: it never fails on speed (exit 1 only when a case errored).

    python bench/compare_hosts.py --out compare.jsonl            # GPU, the default run (~6-8 min on an H200)
    python bench/compare_hosts.py --tiny --cpu --hosts 0.3.75    # the whole flow on a CPU, tiny Flux, 64 px
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))  # bench/flux and bench/h2d_bandwidth.py, however this file is started
sys.path.insert(1, str(REPO / "scripts"))  # comfy_hosts: a host's environment for a child process

log = logging.getLogger("bench")
FULL_MODEL = Path("/tmp/models/diffusion_models/distorch-flux1-dev-full.safetensors")
TINY_MODEL = REPO / ".host" / "models" / "diffusion_models" / "distorch-tiny-flux.safetensors"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=names, default=["0.33.0", "0.3.75"], help="ComfyUI versions, in run order")
    ap.add_argument("--hosts-dir", type=Path, default=REPO / ".host", help="holds comfyui-<v>/ (and site-<v>/)")
    ap.add_argument("--cfgs", type=floats, default=[1.0, 3.5])
    ap.add_argument("--free-gib", type=floats, default=[16.0, 6.0], help="free VRAM targets of core and ours")
    ap.add_argument("--modes", type=names, default=["resident", "core", "ours"])
    ap.add_argument("--ours-hosts", type=names, default=[],
                    help="run our engine on these hosts only (default: every host)")
    ap.add_argument("--ours-budget", type=names, default=["auto"],
                    help="comma list: auto (virtual_vram_gb=None) and/or GB values; one ours case each")
    ap.add_argument("--dynamic-vram", choices=["on", "off"], default="on", help="on hosts that have it")
    ap.add_argument("--cuda-malloc", choices=["host", "off"], default="host",
                    help="host: torch's cudaMallocAsync backend, as both hosts' main.py set it on an NVIDIA GPU "
                         "with a +cu torch (cuda_malloc.py); off: torch's native caching allocator")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=1,
                    help="sampling runs per cfg, the model left loaded between them: 2 adds the steady state of a "
                         "user's next prompt (ours re-plans by the compute it measured in the first)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ring-slots", type=int, default=None, help="ours: StreamRequest.ring_slots (default: its own)")
    ap.add_argument("--keep-head-blocks", type=int, default=None)
    ap.add_argument("--assume-w-gbps", type=float, default=None, help="skip measuring W")
    ap.add_argument("--worker-timeout", type=float, default=150.0, help="seconds per worker")
    ap.add_argument("--deadline", type=float, default=470.0,
                    help="seconds for the whole run: cases that would start later are skipped (error lines)")
    ap.add_argument("--profile", type=names, default=[],
                    help="profile the runs whose name contains one of these (e.g. ours-auto/16GiB/cfg1/prompt2): "
                         "a chrome trace per run into --profile-dir and a gap report in its line (profiled runs "
                         "pay the profiler's host overhead)")
    ap.add_argument("--profile-dir", type=Path, default=None, help="where the traces go (default: --work-dir)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--log", type=Path, default=None, help="workers' logs (default: <out>.log or stderr)")
    ap.add_argument("--work-dir", type=Path, default=None, help="per-worker results and reference latents")
    ap.add_argument("--tiny", action="store_true", help="tiny Flux, 64 px, 1 + 2 steps, ours also at 0.5 GB")
    ap.add_argument("--cpu", action="store_true", help="ComfyUI --cpu; no occupation, no W, no Dynamic VRAM")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one case (JSON spec)
    return ap


def apply_tiny(opts: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """--tiny: small sizes; options left at their defaults get the tiny ones."""
    opts.size, opts.steps, opts.warmup, opts.tokens = 64, 2, 1, 64
    # The tiny Flux has one double and one single block: only a ring of one slot without a resident head block
    # leaves the planner a plan that streams anything (0.5 GB streams the single block: on the CPU the
    # model is fp32, 2.14 GB, and a budget over 0.566 GB leaves too little for the resident rest).
    tiny = {"ring_slots": 1, "keep_head_blocks": 0, "ours_budget": ["auto", "0.5"], "free_gib": [16.0],
            "worker_timeout": 300.0, "deadline": 1800.0}
    for name, value in tiny.items():
        if getattr(opts, name) == ap.get_default(name):
            setattr(opts, name, value)
    opts.model = opts.model or TINY_MODEL


def worker_env(opts: argparse.Namespace) -> dict[str, str]:
    """The workers' environment: ours, plus the allocator backend main.py would pick (set before CUDA starts)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    conf = env.get("PYTORCH_CUDA_ALLOC_CONF")
    if not opts.cpu and opts.cuda_malloc == "host" and "cudaMallocAsync" not in (conf or ""):
        env["PYTORCH_CUDA_ALLOC_CONF"] = f"{conf},backend:cudaMallocAsync" if conf else "backend:cudaMallocAsync"
    return env


def resolve_hosts(opts: argparse.Namespace) -> list:
    from comfy_hosts import Host
    from flux.compare import HostTree

    base_env = worker_env(opts)
    trees = []
    for version in opts.hosts:
        root = opts.hosts_dir / f"comfyui-{version}"
        if not (root / "main.py").is_file():
            raise SystemExit(f"no ComfyUI {version} at {root} (--hosts-dir)")
        site = opts.hosts_dir / f"site-{version}"
        host = Host(root.resolve(), site.resolve() if site.is_dir() else None)
        trees.append(HostTree(host.version, host.root, {**base_env, **host.env()}))
    return trees


def measure_w(opts: argparse.Namespace, emit) -> float | None:
    """W in a child process (this one never touches CUDA): bench/h2d_bandwidth.py's JSON line."""
    if opts.cpu:
        return None
    if opts.assume_w_gbps:
        emit({"case": "W", "W_GBps": opts.assume_w_gbps, "W_source": "--assume-w-gbps"})
        return opts.assume_w_gbps
    try:
        done = subprocess.run([sys.executable, str(BENCH / "h2d_bandwidth.py")], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        rec = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    except Exception as exc:
        emit({"case": "W", "error": f"measuring W failed: {type(exc).__name__}: {exc}"})
        return None
    rec["case"] = "W"
    emit(rec)
    return rec.get("W_GBps")


def run_worker(spec, host, timeout: float, log_file) -> str | None:
    """One worker process; None when it exited cleanly, else what went wrong (its lines are read anyway)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    log_file.write(f"\n===== {spec.case} (timeout {timeout:.0f} s)\n")
    log_file.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=host.env, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own group: a timeout kills the worker and its children
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"worker timed out after {timeout:.0f} s"
    return None if rc == 0 else f"worker exited with {rc}"


def worker_lines(spec, problem: str | None) -> list[dict]:
    """The worker's lines; a cfg it never reported becomes an error line saying why."""
    path = Path(spec.result_path)
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    seen = {ln.get("cfg") for ln in lines}
    for cfg in spec.cfgs:
        if cfg not in seen:
            lines.append({"case": spec.run_name(cfg), "host": spec.host, "mode": spec.mode, "cfg": cfg,
                          "free_gib_target": spec.free_gib, "ours_budget": spec.ours_budget,
                          "error": f"{problem or 'worker wrote no line'} (see the log)"})
    return lines


def drive(opts: argparse.Namespace) -> int:
    from flux import compare, report

    start = time.monotonic()
    work = opts.work_dir or Path(tempfile.mkdtemp(prefix="distorch-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "latents", ignore_errors=True)  # a stale line or reference latent must never be read
    for stale in work.glob("worker*.jsonl"):
        stale.unlink()
    log_path = opts.log or (opts.out.with_suffix(".log") if opts.out else work / "workers.log")
    reporter = report.Reporter(opts.out)
    opts.profile_dir = opts.profile_dir or (work if opts.profile else None)
    specs = compare.build_specs(opts, resolve_hosts(opts), work)
    env = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k != "worker"}
    reporter.emit({"case": "env", **env, "workers": [s.case for s, _ in specs], "log": str(log_path)})
    results = compare.Results(measure_w(opts, reporter.emit))
    with open(log_path, "a") as log_file:
        for spec, host in specs:
            left = opts.deadline - (time.monotonic() - start)
            problem = "skipped: the run's deadline passed" if left < 20 else \
                run_worker(spec, host, min(opts.worker_timeout, left), log_file)
            for rec in worker_lines(spec, problem):
                reporter.emit(results.add(rec))
    summary = results.summary()
    reporter.emit(summary)
    reporter.close()
    print(compare.tables(results, summary), flush=True)
    print(f"log: {log_path}  work: {work}  {time.monotonic() - start:.0f} s", flush=True)
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    opts = ap.parse_args(argv)
    if opts.worker is not None:
        from flux import worker

        rc = worker.main(opts.worker)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)  # no teardown: the occupier and pinned buffers go with the process (aimdo hooks cudaFree)
    if opts.tiny:
        apply_tiny(opts, ap)
    opts.model = opts.model or FULL_MODEL
    if not opts.model.is_file():
        raise SystemExit(f"no model at {opts.model} (scripts/synth_models.py writes it)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    return drive(opts)


if __name__ == "__main__":
    sys.exit(main())
