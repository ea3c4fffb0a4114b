#!/usr/bin/env python3
"""Generate random-weight checkpoints with real architectures that ComfyUI's model detection accepts.

Weights cannot be downloaded here, so tests, the demo and GPU benchmarks use files built from ComfyUI's own
model classes (real key names and shapes) filled with seeded random values. See scripts/synth/catalog.py
for the model sets. Each file is written once: a sidecar `<file>.json` records the generator version and a
hash of the spec, and a matching sidecar means "cached" (no ComfyUI import, no writing).

    python scripts/synth_models.py --models-dir DIR --set tiny|full [--device cpu|cuda] [--comfy-root PATH]
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes the sibling `synth` package importable

from synth.catalog import SETS  # noqa: E402
from synth.specs import Spec  # noqa: E402

GENERATOR_VERSION = 1  # bump when the values written for an unchanged spec change
SEED = 20240601
DEFAULT_COMFY_ROOT = Path(__file__).resolve().parent.parent / ".host" / "comfyui"


@dataclass
class Result:
    name: str
    path: Path
    params: int
    bytes: int
    status: str  # "written" | "cached"
    seconds: float

    def line(self) -> str:
        return (f"{self.name:<22} {self.params / 1e6:10.1f} M params {self.bytes / 2**20:10.1f} MiB "
                f"{self.status:<8} {self.seconds:7.1f} s  {self.path}")


def spec_hash(spec: Spec) -> str:
    blob = json.dumps({"v": GENERATOR_VERSION, "seed": SEED, "relpath": spec.relpath, "dtype": str(spec.dtype),
                       "config": spec.config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached(spec: Spec, path: Path) -> dict | None:
    """The sidecar, if it describes exactly this file as written by this generator version and spec."""
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    ok = path.is_file() and meta.get("hash") == spec_hash(spec) and meta.get("bytes") == path.stat().st_size
    return meta if ok else None


def _generate(spec: Spec, path: Path, device: str) -> tuple[int, int]:
    from synth.writer import param_count, write_safetensors

    sd = spec.build(spec)
    metadata = {"distorch_synth": spec.name, "distorch_synth_hash": spec_hash(spec), "format": "pt"}
    if spec.relpath.endswith(".gguf"):
        from synth.gguf_writer import write_gguf

        return param_count(sd), write_gguf(path, sd, spec.config["gguf"], SEED, device, metadata)
    size = write_safetensors(path, sd, spec.dtype, SEED, device, metadata)
    return param_count(sd), size


def ensure_one(spec: Spec, models_dir: Path, device: str) -> Result:
    path = models_dir / spec.relpath
    t0 = time.perf_counter()
    meta = _cached(spec, path)
    if meta is not None:
        return Result(spec.name, path, meta["params"], meta["bytes"], "cached", time.perf_counter() - t0)
    params, size = _generate(spec, path, device)
    # Sidecar last: its presence (with a matching hash and size) is what marks the file complete.
    record = {"hash": spec_hash(spec), "version": GENERATOR_VERSION, "name": spec.name, "params": params,
              "bytes": size, "dtype": str(spec.dtype), "device": device}
    _sidecar(path).write_text(json.dumps(record, indent=1) + "\n")
    return Result(spec.name, path, params, size, "written", time.perf_counter() - t0)


def generate_set(models_dir: Path | str, model_set: str = "tiny", device: str = "cpu",
                 comfy_root: Path | str | None = None, verbose: bool = False,
                 only: Sequence[str] | None = None) -> list[Result]:
    """Write (or find cached) every model of a set, or just the ``only`` ones by name; ComfyUI is imported only
    if something must be written."""
    models_dir = Path(models_dir)
    specs = [sp for sp in SETS[model_set] if only is None or sp.name in only]
    unknown = set(only or ()) - {sp.name for sp in specs}
    if unknown:
        raise SystemExit(f"no model named {sorted(unknown)} in set {model_set!r}: {[sp.name for sp in SETS[model_set]]}")
    if any(_cached(sp, models_dir / sp.relpath) is None for sp in specs):
        from synth.comfy_env import import_comfy

        import_comfy(comfy_root or DEFAULT_COMFY_ROOT)
    results = []
    for spec in specs:
        results.append(ensure_one(spec, models_dir, device))
        if verbose:
            print(results[-1].line(), flush=True)
    return results


def ensure_models(models_dir: Path | str, model_set: str = "tiny", device: str = "cpu",
                  comfy_root: Path | str | None = None) -> dict[str, Path]:
    """Logical name -> path of every model in `model_set`, generating missing or stale files."""
    return {r.name: r.path for r in generate_set(models_dir, model_set, device, comfy_root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", required=True, type=Path, help="ComfyUI models dir (checkpoints/, vae/, ...)")
    ap.add_argument("--set", dest="model_set", choices=sorted(SETS), default="tiny")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where random values are drawn")
    ap.add_argument("--comfy-root", type=Path, default=DEFAULT_COMFY_ROOT)
    ap.add_argument("--only", action="append", metavar="NAME", help="write only this model of the set (repeatable)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = generate_set(args.models_dir, args.model_set, args.device, args.comfy_root, verbose=True,
                           only=args.only)
    total = sum(r.bytes for r in results)
    print(f"synth_models: {len(results)} models, {total / 2**30:.2f} GiB, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
