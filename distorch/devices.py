"""Device names and the devices this machine really has.

Canonical names: single-instance types are bare (``cpu``, ``mps``, ``meta``); every other type
carries an index (``cuda`` -> ``cuda:0``). Names are lower-cased, then validated by ``torch.device``.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import psutil
import torch

from .errors import DeviceError

SINGLE_INSTANCE_TYPES = frozenset({"cpu", "mps", "meta"})
MAX_DEVICE_INDEX = 127  # torch stores the index in an int8 and silently wraps larger ones
_NAME = re.compile(r"([a-z][a-z0-9_]*)(?::([0-9]{1,4}))?", re.ASCII)
NAME_HINT = "use a torch device name such as cpu, cuda:0, xpu:0 or mps"


def canonical_device(name: str) -> str:
    """Canonical form of ``name``: ``'cuda'`` -> ``'cuda:0'``, ``'CPU:0'`` -> ``'cpu'``.

    Raises :class:`DeviceError` for anything ``torch.device`` does not accept. Presence on this
    machine is not checked (see :func:`require_device`).
    """
    text = name.strip().lower() if isinstance(name, str) else ""
    match = _NAME.fullmatch(text)
    if match is None:
        raise DeviceError(f"invalid device name {name!r}; {NAME_HINT}", device=str(name))
    kind, index_text = match.groups()
    index = int(index_text) if index_text is not None else None
    if index is not None and index > MAX_DEVICE_INDEX:
        raise DeviceError(f"device index of {name!r} is above {MAX_DEVICE_INDEX}", device=name)
    _check_torch_knows(name, text)
    if kind in SINGLE_INSTANCE_TYPES:
        if index:
            raise DeviceError(f"device type {kind!r} has only one device; write {kind!r}", device=name)
        return kind
    return f"{kind}:{index or 0}"


def _check_torch_knows(name: str, text: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about deprecated types such as mkldnn
            torch.device(text)
    except Exception as error:  # torch raises RuntimeError today; any failure means "not a device"
        raise DeviceError(f"unknown device {name!r}; {NAME_HINT}", device=name) from error


def _probe(count: object) -> int:
    """Device count from a backend probe; a broken driver counts as no device rather than a crash."""
    try:
        return int(count()) if callable(count) else 0
    except Exception:
        return 0


def _backend_count(backend: object) -> int:
    if backend is None or not _probe(getattr(backend, "is_available", None)):
        return 0
    return _probe(getattr(backend, "device_count", None))


def available_devices() -> list[str]:
    """Canonical names of the devices torch can use here, ``cpu`` first."""
    devices = ["cpu"]
    for kind in ("cuda", "xpu"):
        devices += [f"{kind}:{i}" for i in range(_backend_count(getattr(torch, kind, None)))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and _probe(getattr(mps, "is_available", None)):
        devices.append("mps")
    return devices


def require_device(name: str, available: Iterable[str] | None = None) -> str:
    """Canonical ``name`` if the device is present (in ``available``, default: this machine)."""
    device = canonical_device(name)
    present = [canonical_device(d) for d in (available if available is not None else available_devices())]
    if device not in present:
        raise DeviceError(
            f"device {device!r} is not present on this machine; available: {', '.join(present)}", device=device
        )
    return device


def device_total_memory(name: str) -> int:
    """Total memory of a present device in bytes (system RAM for ``cpu`` and unified-memory ``mps``)."""
    device = require_device(name)
    kind, _, index = device.partition(":")
    if kind in ("cuda", "xpu"):
        return int(getattr(torch, kind).get_device_properties(int(index)).total_memory)
    if kind == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    if kind in ("cpu", "mps"):
        return int(psutil.virtual_memory().total)
    raise DeviceError(f"cannot tell the memory size of device {device!r}", device=device)


def device_free_memory(name: str) -> int:
    """Bytes free on a present device now: the driver's free memory plus what torch holds cached (CUDA), or
    available system RAM (``cpu``)."""
    device = require_device(name)
    kind, _, index = device.partition(":")
    if kind == "cuda":
        free, _ = torch.cuda.mem_get_info(int(index))
        cached = torch.cuda.memory_reserved(int(index)) - torch.cuda.memory_allocated(int(index))
        return int(free + cached)
    if kind == "cpu":
        return int(psutil.virtual_memory().available)
    return device_total_memory(device)


PIN_FRACTION = 0.8  # page-locked memory cannot be swapped: leave the OS and other programs a fifth of RAM


def default_pin_cap() -> int:
    """Host bytes all streaming engines together may page-lock: 80% of physical RAM."""
    return int(psutil.virtual_memory().total * PIN_FRACTION)
