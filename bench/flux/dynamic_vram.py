"""ComfyUI's Dynamic VRAM (comfy-aimdo), switched on in-process the way ComfyUI 0.33's main.py does it.

main.py does three things (0.33, lines 96-110 and 291-332): `comfy_aimdo.control.init(...)` right after the
arguments are parsed, `comfy_aimdo.control.init_devices(...)` once `comfy.model_management` is imported, and
then `comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic` plus `comfy.memory_management.aimdo_enabled
= True`. A ComfyUI without `comfy.memory_management` (0.3.75) has no Dynamic VRAM: everything here is feature
detection, never a version check, and every record says which memory path was really active.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

log = logging.getLogger("bench")
GIB = 1 << 30


def generation_present() -> bool:
    """This ComfyUI has the Dynamic VRAM generation (comfy.memory_management) and comfy-aimdo is importable.
    Call with the ComfyUI tree already on sys.path."""
    return (importlib.util.find_spec("comfy.memory_management") is not None
            and importlib.util.find_spec("comfy_aimdo") is not None)


def disable(args: Any) -> None:
    """The legacy path (`--disable-dynamic-vram`), for a host that has Dynamic VRAM."""
    if hasattr(args, "disable_dynamic_vram"):
        args.disable_dynamic_vram = True


def init_control(args: Any) -> bool:
    """Step 1, before `comfy.model_management` is imported: load comfy-aimdo's library (main.py's calls, with
    the same TypeError fallbacks for the 0.4.10 and 0.4.9 protocols)."""
    import comfy_aimdo.control as control

    reserve = getattr(args, "reserve_vram", None)
    headroom = None if reserve is None else int(reserve * GIB)
    try:
        nvml_pressure = not getattr(args, "disable_nvml_pressure", False)
        ok = control.init(simple_vram_headroom=headroom, nvml_pressure=nvml_pressure)
    except TypeError:
        try:
            ok = control.init(simple_vram_headroom=headroom)
        except TypeError:
            ok = control.init()
    return ok is not False  # older protocols return None on success


def enable(mm: Any, args: Any) -> tuple[bool, str]:
    """Step 2, after `comfy.model_management` (and `nodes`) are imported: register the devices with aimdo and
    make ComfyUI's loaders build ModelPatcherDynamic. (enabled, why) - why says what failed when not enabled."""
    import comfy.memory_management
    import comfy.model_patcher
    import comfy_aimdo.control as control

    if not mm.is_nvidia():
        return False, "not an NVIDIA device (main.py enables Dynamic VRAM only there by default)"
    if getattr(mm, "torch_version_numeric", (99, 0)) < (2, 8):
        return False, "torch < 2.8 (main.py falls back to the legacy ModelPatcher)"
    headroom = int((getattr(args, "vram_headroom", 0) or 0) * GIB)
    devices = mm.get_all_torch_devices()
    try:
        ok = control.init_devices((d.index, headroom) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9 protocol
        ok = control.init_devices(d.index for d in devices)
    if not ok:
        return False, "comfy_aimdo.control.init_devices returned False (no working comfy-aimdo)"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    log.info("DynamicVRAM support detected and enabled (in-process, as main.py does)")
    return True, "enabled"


def aimdo_vram_bytes() -> int | None:
    """VRAM comfy-aimdo holds itself (torch's counters miss it); None when aimdo is not loaded."""
    try:
        control = importlib.import_module("comfy_aimdo.control")
    except ImportError:
        return None
    if getattr(control, "lib", None) is None:
        return None
    try:
        return int(control.get_total_vram_usage())
    except Exception:
        return None


def memory_path(patcher: Any = None, base: Any = None) -> dict[str, Any]:
    """Which memory path was active: the generation, aimdo on/off, the class core's loaders build, and the
    classes of the patcher that sampled (`patcher`) and of the one core's loader returned (`base`)."""
    try:
        memory_management = importlib.import_module("comfy.memory_management")
        aimdo = bool(getattr(memory_management, "aimdo_enabled", False))
        generation = True
    except ImportError:
        aimdo, generation = False, False
    model_patcher = importlib.import_module("comfy.model_patcher")
    core_cls = getattr(model_patcher, "CoreModelPatcher", model_patcher.ModelPatcher)
    record = {"dynamic_vram_generation": generation, "dynamic_vram": aimdo,
              "core_patcher_class": core_cls.__name__}
    if base is not None:
        record["loader_patcher_class"] = type(base).__name__
    if patcher is not None:
        record["patcher_class"] = type(patcher).__name__
    return record
