#!/usr/bin/env python3
"""Dynamic VRAM coexistence, on a real ComfyUI server (GPU machine; --tiny --cpu proves the plumbing anywhere).

One graph: our streamed diffusion model (DisTorchUNETLoader; auto budget where the node offers it) with the
text encoders (DualCLIPLoader: T5-XXL + CLIP-L) and the VAE (TAEF1) loaded by core loaders - under Dynamic
VRAM on ComfyUI 0.33 with an NVIDIA GPU, which main.py switches on by itself. The sequence:

  1. reference: the same graph with core's UNETLoader, the whole card free (all resident), cfg 1 and 3.5
  2. POST /free: the device memory returns to the server's baseline
  3. an occupier process holds the rest of the card: 16 GiB stay free (the server sees less free memory)
  4. ours at cfg 1 and 3.5: runs, latents bit-identical to the reference, forwards per step recorded
  5. core-only at cfg 1 and 3.5 (the same Flux through core): loading it evicts ours (engine unloaded); core
     batching cond+uncond means ours must too
  6. ours once more (reloads after the eviction, still bit-identical)
  7. POST /free: device memory back to the baseline of step 3, no model loaded, no engine loaded
  8. the server log holds our plan table and a statement of the memory path (also inside the plan table)

One JSON line per check (check, passed, numbers; informational checks never fail the run), then a summary
line and a table. Exit 1 when a check failed. Checks that cannot hold on a CPU (device memory, eviction under
memory pressure, Dynamic VRAM) report passed=null there.

    python tests/gpu/dynamic_vram_coexistence.py --models-dir /tmp/models --out coexist.jsonl
    python tests/gpu/dynamic_vram_coexistence.py --tiny --cpu --host 0.3.75
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO / "scripts"))

import coexistence_graphs as graphs  # noqa: E402
from comfy_hosts import Host  # noqa: E402
from comfy_server import ComfyServer, execution_error  # noqa: E402

GIB = 1 << 30
PROBE_NODES = REPO / "tests" / "host" / "probe_nodes"
OCCUPIER = REPO / "bench" / "flux" / "occupy.py"
CFGS = (1.0, 3.5)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="0.33.0", help="ComfyUI version: <hosts-dir>/comfyui-<v>")
    ap.add_argument("--hosts-dir", type=Path, default=REPO / ".host")
    ap.add_argument("--models-dir", type=Path, default=Path("/tmp/models"), help="ComfyUI layout (full set)")
    ap.add_argument("--free-gib", type=float, default=16.0, help="free VRAM the occupier leaves")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ours-vvram", default="auto", help="auto (where the node offers it) or GB")
    ap.add_argument("--ours-fallback-gb", type=float, default=13.0, help="virtual_vram_gb when auto is absent")
    ap.add_argument("--ours-inputs", type=json.loads, default={}, help="JSON: more/overriding loader inputs")
    ap.add_argument("--memory-tolerance-gib", type=float, default=1.0, help="for 'memory given back' checks")
    ap.add_argument("--prompt-timeout", type=float, default=240.0)
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here too")
    ap.add_argument("--work-dir", type=Path, default=None, help="occupier log, latents, the server's base")
    ap.add_argument("--server-log", type=Path, default=None, help="ComfyUI's log (default: <work-dir>/server.log)")
    ap.add_argument("--tiny", action="store_true", help="tiny Flux + CLIP-L, 64 px, 2 steps, budget 0 GB")
    ap.add_argument("--cpu", action="store_true", help="ComfyUI --cpu: no occupier, no Dynamic VRAM")
    return ap


class Checks:
    """One JSON line per check, kept for the summary."""

    def __init__(self, out: Path | None) -> None:
        self.items: list[dict[str, Any]] = []
        self.out = open(out, "a") if out else None

    def emit(self, check: str, passed: bool | None, informational: bool = False, **numbers: Any) -> dict[str, Any]:
        rec = {"check": check, "passed": passed, **({"informational": True} if informational else {}), **numbers}
        self.items.append(rec)
        line = json.dumps(rec, default=str)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()
        return rec

    def failed(self) -> list[str]:
        return [c["check"] for c in self.items if c["passed"] is False and not c.get("informational")]

    def summary(self) -> dict[str, Any]:
        counted = [c for c in self.items if not c.get("informational")]
        rec = {"check": "summary", "passed": not self.failed(),
               "checks_passed": sum(c["passed"] is True for c in counted), "checks_failed": len(self.failed()),
               "checks_skipped": sum(c["passed"] is None for c in counted), "failed": self.failed()}
        self.emit(**rec)
        rows = [("check", "passed", "")] + [(c["check"], str(c["passed"]), "info" if c.get("informational") else "")
                                             for c in self.items[:-1]]
        width = max(len(r[0]) for r in rows)
        print("\n".join(f"{a.ljust(width)}  {b.ljust(6)}  {c}".rstrip() for a, b, c in rows), flush=True)
        return rec


def forwards_per_step(report: dict[str, Any], steps: int) -> float:
    return len(report["forwards"]) / steps


def batched(report: dict[str, Any]) -> bool:
    """Every forward carried cond and uncond together."""
    return bool(report["forwards"]) and all(conds == 2 for _, conds in report["forwards"])


class Coexistence:
    def __init__(self, opts: argparse.Namespace, checks: Checks) -> None:
        self.o = opts
        self.checks = checks
        self.work = opts.work_dir or Path(tempfile.mkdtemp(prefix="distorch-coexist-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.models = graphs.TINY_MODELS if opts.tiny else graphs.FULL_MODELS
        self.server: ComfyServer | None = None
        self.occupier: subprocess.Popen | None = None
        self.ours_inputs: dict[str, Any] = {}
        self.nonce = 0
        self.size, self.steps = (64, 2) if opts.tiny else (opts.size, opts.steps)
        self.dynamic_expected = False  # the server runs Dynamic VRAM (probed, not assumed)

    # -- the server, the occupier ---------------------------------------------------------------------
    def start_server(self) -> None:
        root = self.o.hosts_dir / f"comfyui-{self.o.host}"
        site = self.o.hosts_dir / f"site-{self.o.host}"
        host = Host(root.resolve(), site.resolve() if site.is_dir() else None)
        self.server = ComfyServer(log_path=self.o.server_log or self.work / "server.log",
                                  output_dir=self.work / "output", extra_custom_nodes=[PROBE_NODES],
                                  gpu=not self.o.cpu, host=host, base_dir=self.work / "base",
                                  extra_models=self.o.models_dir, start_timeout=240)
        t0 = time.monotonic()
        self.server.start()
        info = self.server.get("/object_info", timeout=60)
        compute = {"compute_device": "cpu" if self.o.cpu else "cuda:0", "donor_device": "cpu", "expert_allocation": ""}
        budget, how = graphs.ours_budget_inputs(info.get("DisTorchUNETLoader", {}), self.o.ours_vvram,
                                                self.o.ours_fallback_gb)
        self.ours_inputs = {**compute, **budget, **self.o.ours_inputs}
        state = self.memory_state()
        self.dynamic_expected = bool(state["memory_path"].get("dynamic_vram"))
        problems = graphs.missing_inputs(self.graph("ours", 1.0, "check"), info)
        self.checks.emit("server started with the plugin and the probes", not problems, problems=problems,
                         host=host.version, gpu=not self.o.cpu, start_s=time.monotonic() - t0,
                         ours_budget=how, ours_inputs=self.ours_inputs, memory_path=state["memory_path"],
                         device_free_bytes=state.get("device_free_bytes"))
        if problems:
            raise RuntimeError(f"the graph cannot run on this server: {problems}")
        dynamic = state["memory_path"].get("dynamic_vram")  # None: this ComfyUI has no Dynamic VRAM at all
        decidable = not self.o.cpu and dynamic is not None
        self.checks.emit("Dynamic VRAM active in the server", dynamic if decidable else None,
                         informational=not decidable, memory_path=state["memory_path"])

    def start_occupier(self) -> None:
        """A separate process takes the rest of the card: the server sees --free-gib free."""
        log = open(self.work / "occupier.log", "w")
        self.occupier = subprocess.Popen([sys.executable, str(OCCUPIER), "--free-gib", str(self.o.free_gib)],
                                         stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        ready = read_line(self.occupier, 120.0)
        state = json.loads(ready) if ready else {"occupier": "no answer in 120 s"}
        free = self.device_free()
        ok = state.get("occupier") == "ready" and free is not None and \
            abs(free - self.o.free_gib * GIB) <= self.o.memory_tolerance_gib * GIB
        self.checks.emit("occupier leaves the target free", ok, occupier=state, server_sees_free_bytes=free,
                         target_bytes=int(self.o.free_gib * GIB))
        if state.get("occupier") != "ready":
            raise RuntimeError(f"occupier failed: {state}")

    def stop(self) -> None:
        if self.occupier is not None and self.occupier.poll() is None:
            os.killpg(self.occupier.pid, signal.SIGTERM)
            self.occupier.wait(timeout=30)
        if self.server is not None:
            self.server.stop()

    # -- prompts --------------------------------------------------------------------------------------
    def graph(self, kind: str, cfg: float, label: str) -> dict[str, Any]:
        self.nonce += 1
        return graphs.flux_graph(kind, self.models, self.ours_inputs, cfg, self.steps, self.size, self.o.seed,
                                 label, self.nonce, str(self.work / f"{label}.pt"))

    def run(self, graph: dict[str, Any], node: str) -> dict[str, Any]:
        """The report of one prompt; a failed prompt raises with ComfyUI's own message."""
        t0 = time.monotonic()
        entry = self.server.run_prompt(graph, timeout=self.o.prompt_timeout)
        error = execution_error(entry)
        if error:
            raise RuntimeError(f"{error.get('node_type')}: {error.get('exception_message')}\n"
                               f"{''.join(error.get('traceback') or [])[-2000:]}")
        report = entry["outputs"][node]["report"][0]
        report["prompt_s"] = time.monotonic() - t0
        return report

    def memory_state(self) -> dict[str, Any]:
        self.nonce += 1
        return self.run(graphs.memory_graph(self.nonce), "1")

    def device_free(self) -> int | None:
        if self.o.cpu:
            return None
        devices = self.server.get("/distorch/devices")["devices"]
        return next((d["free_bytes"] for d in devices if d["device"] == "cuda:0"), None)

    def sample(self, phase: str, kind: str, cfg: float, reference: dict[str, Any] | None) -> dict[str, Any] | None:
        """One graph; checks: it ran, its latent equals the reference's (core's own: informational)."""
        label = f"{phase.replace(' ', '_')}_cfg{cfg:g}"
        try:
            report = self.run(self.graph(kind, cfg, label), graphs.REPORT_NODE)
        except Exception as exc:
            self.checks.emit(f"{phase} cfg{cfg:g} ran", False, error=f"{type(exc).__name__}: {exc}"[:3000],
                             log_tail=self.server.log_tail(30))
            return None
        report.update(forwards_per_step=forwards_per_step(report, self.steps), batched=batched(report), label=label)
        self.checks.emit(f"{phase} cfg{cfg:g} ran", report["latent_finite"] and report.get("image_finite", True),
                         **summary_numbers(report))
        if reference is not None:
            same = report["latent_sha256"] == reference["latent_sha256"]
            self.checks.emit(f"{phase} cfg{cfg:g} bit-identical to all-resident", same, informational=kind == "core",
                             max_abs_diff=self.max_abs_diff(label, reference["label"]),
                             sha256=report["latent_sha256"], reference_sha256=reference["latent_sha256"])
        return report

    def max_abs_diff(self, label: str, reference_label: str) -> float | None:
        import torch

        try:
            a, b = (torch.load(self.work / f"{x}.pt") for x in (label, reference_label))
            return float((a - b).abs().max())
        except Exception:
            return None

    # -- the checks around the prompts ----------------------------------------------------------------
    def free_and_check(self, name: str, baseline: int | None) -> None:
        """POST /free; device memory back to `baseline` (within tolerance), nothing loaded, no engine loaded.
        The prompt worker handles /free's flags after the prompt it is on (or next picks up), so poll."""
        self.server.post("/free", {"unload_models": True, "free_memory": True})
        tolerance, deadline = self.o.memory_tolerance_gib * GIB, time.monotonic() + 60
        while True:
            time.sleep(1.0)
            free, state = self.device_free(), self.memory_state()
            nothing_loaded = not state["loaded_models"] and not any(e["loaded"] for e in state["distorch_engines"])
            memory_ok = None if baseline is None or free is None else free >= baseline - tolerance
            if (nothing_loaded and memory_ok is not False) or time.monotonic() > deadline:
                break
        self.checks.emit(name, nothing_loaded and memory_ok is not False, device_free_bytes=free,
                         baseline_free_bytes=baseline, shortfall_bytes=None if memory_ok is None else baseline - free,
                         loaded_models=state["loaded_models"], distorch_engines=state["distorch_engines"])

    def check_evicted(self, report: dict[str, Any] | None) -> None:
        """After core's Flux ran: our engine was unloaded to make room (a CPU never needs the room)."""
        if report is None:
            return self.checks.emit("loading another model evicts ours", False, error="the core prompt failed")
        engines = report["distorch_engines"]  # an engine collected with its model counts as unloaded
        ours_listed = [m for m in report["loaded_models"] if m.get("patcher") == "StreamingModelPatcher"]
        evicted = not any(e["loaded"] for e in engines) and not ours_listed
        self.checks.emit("loading another model evicts ours", None if self.o.cpu else evicted, engines=engines,
                         loaded_models=report["loaded_models"], device_free_bytes=report.get("device_free_bytes"),
                         torch_allocated_bytes=report.get("torch_allocated_bytes"))

    def check_batching(self, ours: dict[float, Any], core: dict[float, Any]) -> None:
        for cfg in CFGS[1:]:
            o, c = ours.get(cfg), core.get(cfg)
            if o is None or c is None:
                self.checks.emit(f"cfg{cfg:g}: cond+uncond batched where core batches", False, error="a prompt failed")
                continue
            self.checks.emit(f"cfg{cfg:g}: cond+uncond batched where core batches",
                             o["batched"] if c["batched"] else None, informational=not c["batched"],
                             ours_forwards_per_step=o["forwards_per_step"],
                             core_forwards_per_step=c["forwards_per_step"],
                             ours_forwards=o["forwards"][:4], core_forwards=c["forwards"][:4])

    def check_coexistence(self, report: dict[str, Any] | None, cfg: float) -> None:
        """What was loaded when the prompt ended (after VAEDecode): core's models under Dynamic VRAM beside our
        streaming patcher, or ours unloaded to make room for them. Informational: the issue asks that both
        work (the checks above), not that both stay loaded."""
        if report is None:
            return
        patchers = sorted({m.get("patcher") for m in report["loaded_models"]})
        ok = "StreamingModelPatcher" in patchers and (not self.dynamic_expected or "ModelPatcherDynamic" in patchers)
        self.checks.emit(f"ours cfg{cfg:g}: core TE/VAE and our streamed model loaded side by side", ok,
                         informational=True, patchers=patchers, memory_path=report["memory_path"],
                         engines=report["distorch_engines"])

    def check_log(self) -> None:
        found = graphs.log_findings(self.server.log_path.read_text(errors="replace"))
        self.checks.emit("log: our plan table", found["plan_tables"] > 0, **found)
        self.checks.emit("log: our loader states the memory path", bool(found["memory_path_statements"]),
                         statements=found["memory_path_statements"])
        self.checks.emit("log: the plan table names the memory path", found["plan_tables_naming_memory_path"] > 0,
                         example=found["plan_table_example"])

    # -- the sequence -----------------------------------------------------------------------------------
    def sequence(self) -> None:
        self.start_server()
        baseline = self.device_free()
        ref = {cfg: self.sample("reference", "core", cfg, None) for cfg in CFGS}
        self.free_and_check("/free after the reference gives the memory back", baseline)
        if not self.o.cpu:
            self.start_occupier()
        held = self.device_free()
        ours = {cfg: self.sample("ours", "ours", cfg, ref[cfg]) for cfg in CFGS}
        for cfg in CFGS:
            self.check_coexistence(ours[cfg], cfg)
        core = {}
        for cfg in CFGS:
            core[cfg] = self.sample("core", "core", cfg, ref[cfg])
            if cfg == CFGS[0]:
                self.check_evicted(core[cfg])
        self.check_batching(ours, core)
        self.sample("ours again", "ours", CFGS[0], ref[CFGS[0]])
        self.free_and_check("/free gives back everything", held)
        self.check_log()


def summary_numbers(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("label", "prompt_s", "forwards_per_step", "batched", "latent_sha256", "latent_shape", "device_free_bytes",
            "torch_allocated_bytes", "aimdo_vram_bytes", "memory_path", "loaded_models", "distorch_engines")
    return {k: report.get(k) for k in keep} | {"forwards": report["forwards"][:6]}


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first line a child prints, or None when it prints none within `timeout` (or exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            return proc.stdout.readline().strip() or None
    return None


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.tiny:
        opts.models_dir = opts.models_dir if opts.models_dir != Path("/tmp/models") else REPO / ".host" / "models"
        if opts.ours_vvram == "auto" and opts.cpu:
            opts.ours_vvram = "0"  # CPU streaming of the tiny Flux fits no plan but all-resident (see the README)
    checks = Checks(opts.out)
    run = Coexistence(opts, checks)
    try:
        run.sequence()
    except Exception as exc:
        checks.emit("sequence completed", False, error=f"{type(exc).__name__}: {exc}"[:3000],
                    traceback_tail=traceback.format_exc()[-3000:],
                    log_tail=run.server.log_tail(40) if run.server else None)
    finally:
        run.stop()
    print(f"work: {run.work}", flush=True)
    return 0 if checks.summary()["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
