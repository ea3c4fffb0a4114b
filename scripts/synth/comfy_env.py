"""Import ComfyUI's `comfy` package from a source tree, CPU-safe and idempotent."""
from __future__ import annotations

import sys
from pathlib import Path


def import_comfy(comfy_root: Path | str) -> None:
    """Put the ComfyUI tree on sys.path and import `comfy` without argv parsing.

    `comfy.cli_args` parses sys.argv at import unless told not to (pytest's argv would make it exit), and
    `args.cpu` must be set before `comfy.model_management` is first imported, because that module picks the
    torch device once at import time.
    """
    root = str(Path(comfy_root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    if "comfy.model_management" in sys.modules:
        return  # already set up by the caller (tests, a running ComfyUI): never re-decide the device
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    import torch

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (fixes the device choice now)
