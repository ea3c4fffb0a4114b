"""A real, headless ComfyUI server with this plugin loaded: shared by scripts/demo.py and tests/host.

    with ComfyServer() as server:
        entry = server.run_prompt(graph)      # POST /prompt, then poll GET /history/<id>

The server runs in its own process group (killed as a whole on exit) and writes its log to a file,
so a failure can show the log's tail.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from comfy_hosts import MODELS_DIR, ROOT, WEB_ROOT, Host, current_host, prepare_base, use_site_layer

HOST = current_host()  # DISTORCH_COMFY_ROOT, else ComfyUI 0.3.75 (scripts/comfy_hosts.py)
COMFY_ROOT = HOST.root
BASE_DIR = HOST.base_dir
use_site_layer(HOST)  # in-process imports of this host's ComfyUI need its own packages too


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerError(RuntimeError):
    """The server did not start, died, or a prompt failed; the message carries the log's tail."""


def free_port() -> int:
    """A TCP port that is free now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_models(model_set: str = "tiny") -> dict[str, Path]:
    """The synthetic test models, written on first use (scripts/synth_models.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from synth_models import ensure_models as _ensure

    return _ensure(MODELS_DIR, model_set=model_set, device="cpu", comfy_root=COMFY_ROOT)


# ComfyUI's model folders a server started with ``extra_models`` also searches (extra-paths yaml).
MODEL_FOLDERS = ("diffusion_models", "checkpoints", "text_encoders", "clip", "vae", "loras", "clip_vision",
                 "controlnet")


class ComfyServer:
    """Start ComfyUI on a free port; ``extra_custom_nodes`` are extra plugin folders (test probes).

    ``gpu``: leave out ``--cpu`` (ComfyUI picks the GPU; 0.33 then enables Dynamic VRAM by itself on NVIDIA).
    ``host``/``base_dir``: another ComfyUI tree / --base-directory than the process's current host (a private
    base keeps a shared one's plugin link untouched). ``extra_models``: one more models folder (ComfyUI layout),
    searched besides the base's. ``extra_args``: appended to main.py's command line."""

    def __init__(self, log_path: Path | None = None, output_dir: Path | None = None,
                 extra_custom_nodes: list[Path] = (), python: str = sys.executable,
                 start_timeout: float = 180.0, gpu: bool = False, host: Host | None = None,
                 base_dir: Path | None = None, extra_models: Path | None = None, extra_args: list[str] = (),
                 front_end_root: Path | None = None, env: dict[str, str] | None = None) -> None:
        """``extra_models``: a folder laid out like ``models/`` (``diffusion_models/``, ``vae/``, ...) that ComfyUI
        searches too; ``front_end_root``: the front end to serve (default: none, the HTTP API needs none);
        ``gpu``: without ``--cpu``; ``host``/``base_dir``: another ComfyUI tree or base directory than the current
        one; ``extra_args``: more main.py arguments."""
        host = host or HOST
        self.host = Host(host.root, host.site, Path(base_dir) if base_dir else host.base)
        self.gpu = gpu
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})  # more environment variables for the server process
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = Path(tempfile.mkdtemp(prefix="distorch-comfy-"))
        self.log_path = Path(log_path) if log_path else self.work / "server.log"
        self.output_dir = Path(output_dir) if output_dir else self.work / "output"
        self.extra_custom_nodes = [Path(p).resolve() for p in extra_custom_nodes]
        self.extra_models = Path(extra_models).resolve() if extra_models else None
        self.front_end_root = Path(front_end_root) if front_end_root else WEB_ROOT
        self.python = python
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [self.python, "main.py"] + ([] if self.gpu else ["--cpu"]) + [
            "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch", "--disable-api-nodes",
            "--base-directory", str(self.host.base_dir), "--front-end-root", str(self.front_end_root),
            "--output-directory", str(self.output_dir)]
        if self.extra_custom_nodes or self.extra_models:
            cmd += ["--extra-model-paths-config", str(self._extra_paths_file())]
        return cmd + self.extra_args

    def _extra_paths_file(self) -> Path:
        """A custom_nodes folder of symlinks and the extra models folder, announced through an extra-paths yaml."""
        folder = self.work / "custom_nodes"
        folder.mkdir(exist_ok=True)
        for plugin in self.extra_custom_nodes:
            link = folder / plugin.name
            if not link.exists():
                link.symlink_to(plugin, target_is_directory=True)
        text = f"distorch_extra:\n  base_path: {self.work}\n  custom_nodes: custom_nodes\n"
        if self.extra_models:
            kinds = sorted(set(MODEL_FOLDERS) | {p.name for p in self.extra_models.iterdir() if p.is_dir()})
            text += f"distorch_models:\n  base_path: {self.extra_models}\n" + "".join(f"  {k}: {k}\n" for k in kinds)
        config = self.work / "extra_paths.yaml"
        config.write_text(text)
        return config

    def start(self) -> ComfyServer:
        WEB_ROOT.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        prepare_base(self.host)
        env = {**os.environ, **self.host.env(), "PYTHONUNBUFFERED": "1", **self.extra_env}
        # Own session = own process group: stop() kills the server and anything it spawned, nothing else. The
        # server also dies with this process (a killed test run must not leave a server holding GBs of RAM).
        self.process = subprocess.Popen(self.command(), cwd=self.host.root, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.25)
        self.stop()
        raise ServerError(f"ComfyUI not ready after {self.start_timeout:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- HTTP API ----------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict, timeout: float = 30) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return json.loads(body) if body.strip() else None  # POST /free answers 200 with no body
        except urllib.error.HTTPError as error:  # 400 = validation failed; its body says why
            raise ServerError(f"POST {path}: {error.code} {error.read().decode(errors='replace')}") from None

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """ComfyUI's ``POST /free``: unload models, and with ``free_memory`` also drop the execution cache."""
        request = urllib.request.Request(self.url + "/free", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"unload_models": unload_models,
                                                          "free_memory": free_memory}).encode())
        urllib.request.urlopen(request, timeout=30).close()  # answers with an empty body

    def queue_prompt(self, graph: dict) -> str:
        return self.post("/prompt", {"prompt": graph})["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        """The /history entry of a finished prompt (successful or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"ComfyUI died while running {prompt_id}\n{self.log_tail()}")
            time.sleep(0.1)
        raise ServerError(f"prompt {prompt_id} not done after {timeout:.0f} s\n{self.log_tail()}")

    def run_prompt(self, graph: dict, timeout: float = 300) -> dict:
        return self.wait_history(self.queue_prompt(graph), timeout)


def load_graph(path: Path | str) -> dict:
    """An API-format workflow from a file."""
    return json.loads(Path(path).read_text())


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message of a /history entry, or None if it ran cleanly."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
