"""HTTP endpoints for the front-end extension (web/distorch.js), on ComfyUI's own server.

ComfyUI's documented way for a custom node to add endpoints is to decorate handlers with
``server.PromptServer.instance.routes``; the server adds that table to its app after all custom nodes are
imported. When the package is imported without a server (in-process use, tests), nothing is registered.

    GET  /distorch/devices    devices torch sees, with total and free memory
    POST /distorch/preview    a placement preview of a model file, from its header only, sized in the dtype
                              ComfyUI will load it in (asked of ComfyUI through nodes.comfy_adapter)
    GET  /distorch/telemetry  the last prompts' streaming telemetry
    GET  /distorch/metrics    streaming counters and gauges in the Prometheus text format (distorch.metrics)
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from aiohttp import web

from ..distorch import metrics, plan_preview
from ..distorch.budget import AUTO, parse_virtual_vram
from ..distorch.devices import available_devices, device_free_memory, device_total_memory
from ..distorch.errors import AllocationError, DistorchError
from ..distorch.registry import REGISTRY
from ..distorch.safetensors_header import dtype_name, read_header, read_metadata
from . import comfy_adapter

log = logging.getLogger("distorch")

# model folder -> key prefix of the part a DisTorch loader streams (a checkpoint streams its diffusion model)
MODEL_FOLDERS: dict[str, str] = {
    "diffusion_models": "", "unet": "", "checkpoints": "model.diffusion_model.", "text_encoders": "", "clip": "",
}
TEXT_ENCODER_FOLDERS = frozenset({"text_encoders", "clip"})
_MAX_FILES = 4  # TripleCLIPLoader takes three; anything much bigger is not a loader's input


def device_memory(device: str) -> dict[str, Any]:
    """Total and free bytes of one present device; free is None where the backend cannot tell."""
    import psutil
    import torch

    free = None
    kind, _, index = device.partition(":")
    try:
        if kind in ("cuda", "xpu"):
            free = int(getattr(torch, kind).mem_get_info(int(index))[0])
        elif kind in ("cpu", "mps"):
            free = int(psutil.virtual_memory().available)
    except Exception:  # a busy or broken driver must not break the device list
        free = None
    return {"device": device, "total_bytes": device_total_memory(device), "free_bytes": free}


def device_totals() -> dict[str, int]:
    return {device: device_total_memory(device) for device in available_devices()}


def device_free() -> dict[str, int]:
    return {device: device_free_memory(device) for device in available_devices()}


def _error(status: int, message: str, token: str | None = None, position: int | None = None,
           kind: str = "") -> web.Response:
    return web.json_response({"error": message, "token": token, "position": position, "kind": kind},
                             status=status)


def resolve_model_files(folder: str, names: list[str]) -> list[str]:
    """Full paths of model files that ComfyUI lists in ``folder``; anything else raises ``LookupError``.

    Only names from ``folder_paths.get_filename_list`` are accepted, so ``../`` or an absolute path can
    never reach a file outside the model folders.
    """
    import folder_paths

    if folder not in MODEL_FOLDERS:
        raise LookupError(f"model_folder must be one of {sorted(MODEL_FOLDERS)}, got {folder!r}")
    if not names or len(names) > _MAX_FILES or not all(isinstance(n, str) and n for n in names):
        raise LookupError(f"give model_name (or 1 to {_MAX_FILES} model_names) as file names")
    listed = set(folder_paths.get_filename_list(folder))
    paths = []
    for name in names:
        path = folder_paths.get_full_path(folder, name) if name in listed else None
        if path is None or not name.endswith(".safetensors"):
            raise LookupError(f"no .safetensors file {name!r} in {folder}")
        paths.append(path)
    return paths


def load_dtype_name(folder: str, path: str, weight_dtype: str | None = "default") -> str | None:
    """The safetensors name of the dtype ComfyUI will load ``path``'s weights in (None: as stored), asked of
    ComfyUI the way the loader of ``folder`` asks it (``weight_dtype``: UNETLoader's input)."""
    entries = read_header(path)
    if folder in TEXT_ENCODER_FOLDERS:
        dtype = comfy_adapter.text_encoder_load_dtype(entries)
    else:
        dtype = comfy_adapter.diffusion_model_load_dtype(entries, read_metadata(path), weight_dtype)
    return dtype_name(dtype) if dtype is not None else None  # a dtype safetensors cannot name: as stored


def preview_for(body: dict[str, Any]) -> dict[str, Any]:
    """The preview of a request body; raises LookupError / DistorchError / ValueError on bad input."""
    folder = body.get("model_folder", "diffusion_models")
    names = body.get("model_names") or [body.get("model_name")]
    paths = resolve_model_files(folder, names if isinstance(names, list) else [names])
    weight_dtype = str(body.get("weight_dtype") or "default")
    result = plan_preview.preview(
        paths, compute_device=str(body.get("compute_device", "cpu")), device_totals=device_totals(),
        allocation_text=str(body.get("expert_allocation") or ""),
        virtual_vram_gb=parse_virtual_vram(body.get("virtual_vram_gb", AUTO)),
        donor_device=str(body.get("donor_device", "cpu")), prefix=MODEL_FOLDERS[folder], device_free=device_free(),
        load_dtypes=[load_dtype_name(folder, p, weight_dtype) for p in paths],
    )
    result["model_folder"] = folder
    return result


def telemetry_records(limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """``(records, available)``: the last prompts' stats (``PromptStats.as_dict()``, written by the streaming
    patcher after each sampling run)."""
    return REGISTRY.recent_prompt_stats()[-limit:], True


async def get_devices(request: web.Request) -> web.Response:
    return web.json_response({"devices": [device_memory(d) for d in available_devices()]})


async def post_preview(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    try:
        return web.json_response(preview_for(body))
    except AllocationError as error:  # the UI underlines error.token at error.position
        return _error(400, str(error), error.token, error.position, type(error).__name__)
    except LookupError as error:
        return _error(404, str(error.args[0]), kind="NotFound")
    except (DistorchError, ValueError, TypeError) as error:  # budget, device, header problems
        return _error(400, str(error), kind=type(error).__name__)
    except OSError as error:
        return _error(500, f"cannot read model file: {error}", kind="OSError")


async def get_telemetry(request: web.Request) -> web.Response:
    records, available = telemetry_records()
    return web.json_response({"records": records, "available": available})


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(body=metrics.render(REGISTRY).encode("utf-8"), headers={"Content-Type": metrics.CONTENT_TYPE})


ROUTES: tuple[tuple[str, str, Callable], ...] = (
    ("GET", "/distorch/devices", get_devices),
    ("POST", "/distorch/preview", post_preview),
    ("GET", "/distorch/telemetry", get_telemetry),
    ("GET", "/distorch/metrics", get_metrics),
)


def register(routes: web.RouteTableDef) -> bool:
    """Add our routes to ``routes`` once (the package may be imported twice under two names)."""
    if any(getattr(route, "path", "").startswith("/distorch/") for route in routes):
        return False
    for method, path, handler in ROUTES:
        routes.route(method, path)(handler)
    return True


def register_with_server() -> bool:
    """Register on the running PromptServer if there is one; True if routes were added."""
    try:
        import server
    except ImportError:
        return False
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return False
    added = register(instance.routes)
    if added:
        log.info("[DisTorch] routes: %s", ", ".join(f"{m} {p}" for m, p, _ in ROUTES))
    return added


register_with_server()

NODE_CLASS_MAPPINGS: dict[str, type] = {}  # lets nodes/__init__.py treat this like any node module
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["register", "register_with_server", "preview_for", "resolve_model_files", "telemetry_records",
           "MODEL_FOLDERS", "device_memory"]
