"""Wires a :class:`~distorch.planner.PlacementPlan` onto a module: arenas, staging ring, streamer, hooks.

``load`` puts resident tensors on the compute device and streamed blocks in their stores' arenas;
``unload`` takes it all back off, leaving a module that works normally on the offload device. The
arenas belong to the engine and persist across unload/load (re-pinned on load, unpinned on unload),
so a reload costs no repacking. Streamed tensors are rebound to arena views rather than copied, so the
host never holds a second copy of the streamed weights.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .arena import HostArena
from .errors import DistorchError
from .layout import BlockLayout, find_blocks, layout_block
from .planner import PlacementPlan
from .registry import REGISTRY
from .staging import StagingRing
from .streamer import BlockStreamer, StreamedBlock, make_backend
from .telemetry import CudaTimer, NullTelemetry, Telemetry, WallTimer

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    ring_slots: int = 3
    pin_host: bool = True
    host_pin_cap_bytes: int | None = None  # cap on host bytes pinned by ALL live engines together
    telemetry: bool = True
    forward_root: str | None = None  # module path (relative to root) whose forward is one model forward
    split_host_copies: bool = True  # each host block as two halves on two copy streams (see streamer)
    # Donor GPU stores: None = peer-to-peer when torch.cuda.can_device_access_peer says so, else bounce through
    # pinned host buffers (distorch.donor says why and logs which); "bounce" forces the fallback (tests, bench).
    donor_route: str | None = None


def _tensor_at(root: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer object registered under ``name`` (a path relative to ``root``)."""
    module_path, _, attr = name.rpartition(".")
    module = root.get_submodule(module_path)
    tensor = module._parameters.get(attr)
    return tensor if tensor is not None else module._buffers[attr]


def _normalised(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class StreamingEngine:
    def __init__(self, root: nn.Module, plan: PlacementPlan, options: EngineOptions | None = None,
                 name: str | None = None) -> None:
        self.root = root
        self.plan = plan
        self.options = options or EngineOptions()
        self.name = name or type(root).__name__  # what metrics and logs call the model (a loader: its file)
        modules = dict(find_blocks(root))
        missing = [name for name, _ in plan.streamed if name not in modules]
        if missing:
            raise DistorchError(f"the plan streams blocks the model does not have: {missing}")
        self._layouts: dict[str, BlockLayout] = {name: layout_block(name, modules[name]) for name, _ in plan.streamed}
        self._modules = {name: modules[name] for name, _ in plan.streamed}
        self._store_of = {name: _normalised(store) for name, store in plan.streamed}
        self._tensor_block = {t.name: block for block, layout in self._layouts.items() for t in layout.tensors}
        self._arenas: dict[torch.device, HostArena] = {}
        self._ring: StagingRing | None = None
        self._streamer: BlockStreamer | None = None
        self._compute_device: torch.device | None = None
        self._update_depth = 0
        self._updated = False
        self.telemetry: Telemetry = NullTelemetry()
        REGISTRY.add_engine(self)

    # -- state --------------------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self._compute_device is not None

    @property
    def pinned_bytes(self) -> int:
        return sum(arena.pinned_bytes for arena in self._arenas.values())

    @property
    def misses(self) -> int:
        return self._streamer.misses if self._streamer else 0

    def streamed_tensor_names(self) -> frozenset[str]:
        return frozenset(self._tensor_block)

    def host_view(self, name: str) -> torch.Tensor:
        """The arena view holding streamed tensor ``name`` (on its store's device)."""
        self._ensure_arenas()
        return self._arena_of(name).view(name)

    # -- load / unload ------------------------------------------------------------------------------
    def load(self, compute_device: str | torch.device) -> int:
        """Make the module runnable on ``compute_device``; returns the weight bytes placed there."""
        device = _normalised(compute_device)
        if self.is_loaded:
            raise DistorchError(f"engine already loaded on {self._compute_device}; unload first")
        self._ensure_arenas()
        self._sync_streamed_into_arenas()
        placed = self._move_resident(device)
        self._pin_arenas(device)
        self._compute_device = device
        if self._layouts:
            placed += self._start_streaming(device)
        return placed

    def unload(self, offload_device: str | torch.device) -> None:
        """Stop streaming and move resident tensors to ``offload_device``; streamed ones stay in the arenas."""
        if not self.is_loaded:
            return
        if self._streamer is not None:
            self._streamer.detach()  # also waits for in-flight copies: the ring and pins can go
            self._streamer.backend.release()
            self._streamer = None
        if self._ring is not None:
            self._ring.release()
            self._ring = None
        for arena in self._arenas.values():
            arena.unpin()
        self._move_resident(_normalised(offload_device))
        self._compute_device = None

    def _resident_tensors(self) -> Iterator[torch.Tensor]:
        streamed = self._tensor_block
        for name, tensor in self.root.named_parameters():
            if name not in streamed:
                yield tensor
        for name, tensor in self.root.named_buffers():
            if name not in streamed:
                yield tensor

    def _move_resident(self, device: torch.device) -> int:
        moved = 0
        for tensor in self._resident_tensors():
            if tensor.device != device:
                tensor.data = tensor.data.to(device)  # .data keeps Parameter objects and their references
            moved += tensor.numel() * tensor.element_size()
        return moved

    # -- arenas -------------------------------------------------------------------------------------
    def _ensure_arenas(self) -> None:
        """First call: pack every streamed block into its store's arena, block by block, in order."""
        if self._arenas or not self._layouts:
            return
        by_store: dict[torch.device, list[BlockLayout]] = {}
        for name in self._layouts:
            by_store.setdefault(self._store_of[name], []).append(self._layouts[name])
        self._arenas = {store: HostArena(layouts, store) for store, layouts in by_store.items()}
        self._sync_streamed_into_arenas()

    def _arena_of(self, name: str) -> HostArena:
        return self._arenas[self._store_of[self._tensor_block[name]]]

    def _sync_streamed_into_arenas(self) -> None:
        """Point every streamed tensor at its arena view, copying values in where they are elsewhere
        (first packing, or a tensor replaced while unloaded). Each original storage is dropped as
        soon as it is copied, so the host never holds two full copies."""
        for name in self._tensor_block:
            tensor = _tensor_at(self.root, name)
            home = self._arena_of(name).view(name)
            if tensor.data_ptr() != home.data_ptr() or tensor.device != home.device:
                home.copy_(tensor.data)
                tensor.data = home

    def _pin_arenas(self, device: torch.device) -> None:
        if not self.options.pin_host or device.type != "cuda":
            return
        cap = self.options.host_pin_cap_bytes
        for arena in self._arenas.values():
            remaining = None if cap is None else max(cap - REGISTRY.pinned_bytes_total(), 0)
            arena.pin(remaining)

    # -- streaming ----------------------------------------------------------------------------------
    def _start_streaming(self, device: torch.device) -> int:
        slots = min(self.options.ring_slots, len(self._layouts))
        if self.plan.ring_slots and slots > self.plan.ring_slots:
            log.warning("ring of %d slots exceeds the plan's %d: the device footprint exceeds the plan", slots, self.plan.ring_slots)
        self._ring = StagingRing(device, slots, max(layout.nbytes for layout in self._layouts.values()))
        self._ensure_telemetry(device)
        backend = make_backend(device, self._arenas.keys(), slots, self.options.split_host_copies,
                               self._ring.slot_bytes, self.options.donor_route)
        self._streamer = BlockStreamer(self._streamed_blocks(), self._ring, backend, self.telemetry)
        root = self.root.get_submodule(self.options.forward_root) if self.options.forward_root else None
        self._streamer.attach(root)
        return self._ring.nbytes

    def _ensure_telemetry(self, device: torch.device) -> None:
        """Keep collecting into the same Telemetry across reloads unless the timer kind must change."""
        if not self.options.telemetry:
            return
        timer = self.telemetry.timer
        fits = getattr(timer, "device", None) == device if device.type == "cuda" else isinstance(timer, WallTimer)
        if isinstance(self.telemetry, NullTelemetry) or not fits:
            self.telemetry = Telemetry(CudaTimer(device) if device.type == "cuda" else WallTimer())

    def _streamed_blocks(self) -> list[StreamedBlock]:
        blocks = []
        for name, layout in self._layouts.items():
            arena = self._arenas[self._store_of[name]]
            targets = tuple(_tensor_at(self.root, t.name) for t in layout.tensors)
            home = tuple(arena.view(t.name) for t in layout.tensors)
            blocks.append(StreamedBlock(name, self._modules[name], layout, arena.segment(name), targets, home))
        return blocks

    # -- updates (LoRA merges) ----------------------------------------------------------------------
    def begin_update(self) -> None:
        """Start a batch of :meth:`write_streamed`: waits (host) until no copy reads the arenas."""
        self._update_depth += 1
        if self._update_depth == 1 and self._streamer is not None:
            self._streamer.quiesce()

    def end_update(self) -> None:
        """End a batch: prefetched slots are dropped once, and copied again from the new values."""
        self._update_depth -= 1
        if self._update_depth > 0 or not self._updated:
            return
        self._updated = False
        for arena in self._arenas.values():
            if arena.device.type == "cuda":
                torch.cuda.synchronize(arena.device)  # donor writes land before the next peer copy
        if self._streamer is not None:
            self._streamer.invalidate()

    @contextmanager
    def updating(self) -> Iterator[None]:
        self.begin_update()
        try:
            yield
        finally:
            self.end_update()

    def write_streamed(self, name: str, value: torch.Tensor) -> None:
        """Copy a new value of streamed tensor ``name`` (e.g. a LoRA-patched weight) into its arena."""
        if name not in self._tensor_block:
            raise KeyError(f"{name!r} is not a streamed tensor")
        with self.updating():
            self.host_view(name).copy_(value)
            self._updated = True

    def __repr__(self) -> str:
        where = f"loaded on {self._compute_device}" if self.is_loaded else "unloaded"
        return f"StreamingEngine({len(self._layouts)} streamed blocks, {where}, pinned={self.pinned_bytes})"
