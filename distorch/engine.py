"""Wires a :class:`~distorch.planner.PlacementPlan` onto a module: arenas, staging ring, streamer, hooks.

``load`` puts resident tensors on the compute device and streamed blocks in their stores' arenas;
``unload`` takes it all back off, leaving a module that works normally on the offload device. The
arenas belong to the engine and persist across unload/load (streamed blocks re-pinned on load, unpinned on
unload), so a reload costs no repacking. Streamed tensors are rebound to arena views rather than copied, so
the host never holds a second copy of the streamed weights. :meth:`StreamingEngine.replan` swaps the plan
(free VRAM changed between prompts, or the first measured forward paced it): on an unloaded engine for the
next load, on a loaded one in place, moving only the blocks that change role. Only blocks that never
streamed before are packed; a block that became resident keeps its packed copy, unpinned, as its host copy,
so nothing is ever packed twice.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .activation_peak import ActivationPeakProbe
from .arena import HostArena
from .errors import DistorchError
from .host_transfer import HostTransfers
from .layout import BlockLayout, find_blocks, layout_block
from .planner import PlacementPlan
from .profile import BlockProfiler
from .registry import REGISTRY
from .schedule import SlotSchedule
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
    pack_slots: bool = True  # consecutive small streamed blocks share a staging slot (see distorch.schedule)
    # Donor GPU stores: None = peer-to-peer when torch.cuda.can_device_access_peer says so, else bounce through
    # pinned host buffers (distorch.donor says why and logs which); "bounce" forces the fallback (tests, bench).
    donor_route: str | None = None


@dataclass
class LoadStats:
    """Where the last load's time went (host seconds; the resident upload includes waiting for its copies)."""

    pack_s: float = 0.0  # copying newly streamed blocks into their arenas
    packed_bytes: int = 0
    pin_s: float = 0.0  # page-locking streamed blocks (distorch.pinning)
    pinned_bytes: int = 0
    resident_s: float = 0.0  # resident tensors to the compute device
    resident_bytes: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        return {"pack_s": self.pack_s, "packed_bytes": self.packed_bytes, "pin_s": self.pin_s,
                "pinned_bytes": self.pinned_bytes, "resident_s": self.resident_s,
                "resident_bytes": self.resident_bytes}


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
        self.options = options or EngineOptions()
        self.name = name or type(root).__name__  # what metrics and logs call the model (a loader: its file)
        self._all_modules = dict(find_blocks(root))
        self._arenas: dict[torch.device, HostArena] = {}
        self._ring: StagingRing | None = None
        self._streamer: BlockStreamer | None = None
        self._compute_device: torch.device | None = None
        self._update_depth = 0
        self._updated = False
        self.telemetry: Telemetry = NullTelemetry()
        self.load_stats = LoadStats()
        self._profiler: BlockProfiler | None = None
        self._block_seconds: dict[str, float] | None = None  # the latest measured forward, block by block
        self._activation_probe: ActivationPeakProbe | None = None
        self._set_plan(plan)
        REGISTRY.add_engine(self)

    def _set_plan(self, plan: PlacementPlan) -> None:
        missing = [name for name, _ in plan.streamed if name not in self._all_modules]
        if missing:
            raise DistorchError(f"the plan streams blocks the model does not have: {missing}")
        self.plan = plan
        self._layouts: dict[str, BlockLayout] = {name: layout_block(name, self._all_modules[name])
                                                 for name, _ in plan.streamed}
        self._modules = {name: self._all_modules[name] for name, _ in plan.streamed}
        self._store_of = {name: _normalised(store) for name, store in plan.streamed}
        self._tensor_block = {t.name: block for block, layout in self._layouts.items() for t in layout.tensors}

    def replan(self, plan: PlacementPlan) -> int | None:
        """Switch to ``plan``. Unloaded: from the next load on. Loaded: now, in place -- streaming stops, blocks
        that newly stream are packed from the compute device and freed there, blocks that became resident are
        copied up from their packs, the rest stays where it is, and streaming starts again (returns the bytes
        now placed on the compute device, as :meth:`load` does). A full unload and load would move every
        resident weight down and up again: seconds for a plan that changes a few blocks."""
        if not self.is_loaded:
            self._set_plan(plan)
            return None
        device = self._compute_device
        self._stop_streaming()
        self._set_plan(plan)
        return self._place(device)

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
        self._pack_streamed()
        return self._arena_of(name).view(name)

    # -- load / unload ------------------------------------------------------------------------------
    def load(self, compute_device: str | torch.device) -> int:
        """Make the module runnable on ``compute_device``; returns the weight bytes placed there."""
        device = _normalised(compute_device)
        if self.is_loaded:
            raise DistorchError(f"engine already loaded on {self._compute_device}; unload first")
        return self._place(device)

    def _place(self, device: torch.device) -> int:
        """Pack what newly streams (freeing its copy wherever it was), move what is resident to ``device``
        (a no-op for tensors already there), pin, start streaming and profiling."""
        stats = self.load_stats = LoadStats()
        t0 = time.perf_counter()
        stats.packed_bytes = self._pack_streamed()
        t1 = time.perf_counter()
        placed = self._move_resident(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the upload's real duration, not its enqueueing
        t2 = time.perf_counter()
        self._drop_unstreamed_packs()
        self._pin_arenas(device)
        t3 = time.perf_counter()
        stats.pack_s, stats.resident_s, stats.pin_s = t1 - t0, t2 - t1, t3 - t2
        stats.resident_bytes, stats.pinned_bytes = placed, self.pinned_bytes
        self._compute_device = device
        if self._layouts:
            placed += self._start_streaming(device)
        self._start_profiling(device)
        log.info("[DisTorch] load on %s: packed %.2f GB in %.2f s, resident %.2f GB in %.2f s, pinned %.2f GB "
                 "in %.2f s", device, stats.packed_bytes / 1e9, stats.pack_s, stats.resident_bytes / 1e9,
                 stats.resident_s, stats.pinned_bytes / 1e9, stats.pin_s)
        return placed

    def unload(self, offload_device: str | torch.device) -> None:
        """Stop streaming and move resident tensors to ``offload_device``; streamed ones stay in the arenas."""
        if not self.is_loaded:
            return
        self._stop_streaming()
        for arena in self._arenas.values():
            arena.unpin()
        self._move_resident(_normalised(offload_device))
        self._compute_device = None

    def _stop_streaming(self) -> None:
        """Hooks off, every streamed tensor back on its arena view, in-flight copies done, ring freed."""
        self.block_seconds()  # keep what the last forwards measured (this waits for the device anyway)
        if self._profiler is not None:
            self._profiler.close()
            self._profiler = None
        if self._activation_probe is not None:
            self._activation_probe.close()
        if self._streamer is not None:
            self._streamer.detach()  # also waits for in-flight copies: the ring and pins can go
            self._streamer.backend.release()
            self._streamer = None
        if self._ring is not None:
            self._ring.release()
            self._ring = None

    def _resident_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        streamed = self._tensor_block
        for name, tensor in self.root.named_parameters():
            if name not in streamed:
                yield name, tensor
        for name, tensor in self.root.named_buffers():
            if name not in streamed:
                yield name, tensor

    def _packed_home(self, name: str, device: torch.device) -> torch.Tensor | None:
        """The packed copy of a tensor of a block that streamed under an earlier plan, if it is on ``device``."""
        for arena in self._arenas.values():
            if arena.device == device and name in arena.tensor_names:
                return arena.view(name)
        return None

    def _move_resident(self, device: torch.device) -> int:
        moved = 0
        with HostTransfers() as transfers:
            for name, tensor in self._resident_tensors():
                if tensor.device != device:
                    # A block packed under an earlier plan keeps that copy (unpinned): going back to the host is
                    # a rebind, not a copy, and streaming it again later needs no repacking.
                    home = self._packed_home(name, device)
                    tensor.data = home if home is not None else transfers.move(tensor.data, device)  # same Parameter
                moved += tensor.numel() * tensor.element_size()
        return moved

    # -- arenas -------------------------------------------------------------------------------------
    def _arena_of(self, name: str) -> HostArena:
        return self._arenas[self._store_of[self._tensor_block[name]]]

    def _pack_streamed(self) -> int:
        """Point every streamed tensor at its view in its store's arena, packing blocks that are not there
        yet (first load, a re-plan, or a tensor replaced while unloaded), in execution order. Each original
        storage is dropped as soon as it is copied, so the host never holds two copies. Returns bytes copied."""
        copied = 0
        with HostTransfers() as transfers:
            for block, layout in self._layouts.items():
                store = self._store_of[block]
                if store not in self._arenas:
                    self._arenas[store] = HostArena(store)
                arena = self._arenas[store]
                new_block = block not in arena
                arena.add(layout)
                for slot in layout.tensors:
                    tensor, home = _tensor_at(self.root, slot.name), arena.view(slot.name)
                    if tensor.data_ptr() != home.data_ptr() or tensor.device != home.device:
                        transfers.copy_into(home, tensor.data)
                        tensor.data = home
                        copied += 0 if new_block else slot.nbytes
                copied += layout.nbytes if new_block else 0
        return copied

    def _drop_unstreamed_packs(self) -> None:
        """Free the packed copies of blocks that now stream from ANOTHER store (after a re-plan their tensors
        were packed there). A block that became resident keeps its pack: it is its host copy."""
        for store, arena in self._arenas.items():
            for block in arena.block_names:
                if block in self._store_of and self._store_of[block] != store:
                    arena.remove(block)

    def _pin_arenas(self, device: torch.device) -> None:
        """Page-lock the streamed blocks only (a block kept packed while resident stays pageable)."""
        if not self.options.pin_host or device.type != "cuda":
            return
        cap = self.options.host_pin_cap_bytes
        for store, arena in self._arenas.items():
            streamed = [b for b in arena.block_names if self._store_of.get(b) == store]
            arena.unpin([b for b in arena.block_names if b not in streamed])
            remaining = None if cap is None else max(cap - REGISTRY.pinned_bytes_total(), 0)
            arena.pin(streamed, cap_bytes=remaining)

    # -- streaming ----------------------------------------------------------------------------------
    def _start_streaming(self, device: torch.device) -> int:
        slots = min(self.options.ring_slots, len(self._layouts))
        if self.plan.ring_slots and slots > self.plan.ring_slots:
            log.warning("ring of %d slots exceeds the plan's %d: the device footprint exceeds the plan", slots, self.plan.ring_slots)
        align = StagingRing.slot_alignment
        slot_bytes = max(-(-layout.nbytes // align) * align for layout in self._layouts.values())
        blocks = self._streamed_blocks()
        schedule = SlotSchedule.build([b.layout.nbytes for b in blocks], slot_bytes, slots, pack=self.options.pack_slots)
        self._ring = StagingRing(device, schedule.slots, slot_bytes)  # no more slots than fills per forward
        self._ensure_telemetry(device)
        backend = make_backend(device, self._arenas.keys(), schedule.slots, self.options.split_host_copies,
                               slot_bytes, self.options.donor_route, schedule.positions)
        self._streamer = BlockStreamer(blocks, self._ring, backend, self.telemetry, schedule)
        root = self.root.get_submodule(self.options.forward_root) if self.options.forward_root else None
        self._streamer.attach(root)
        return self._ring.nbytes

    def _start_profiling(self, device: torch.device) -> None:
        """Time every block, and measure the activation peak, on the second forward after this load (see
        distorch.profile and distorch.activation_peak; the peak needs the forward root)."""
        timer = CudaTimer(device) if device.type == "cuda" else WallTimer()
        root = self.root.get_submodule(self.options.forward_root) if self.options.forward_root else None
        self._profiler = BlockProfiler(list(self._all_modules.items()), timer, root)
        self._activation_probe = ActivationPeakProbe(device, root) if root is not None else None

    def activation_peak_bytes(self) -> int | None:
        """The most one forward since the last load allocated on the compute device beyond what was allocated
        when it started (its activations and scratch), or None before one was measured (or not on CUDA)."""
        return None if self._activation_probe is None else self._activation_probe.peak_bytes

    def activation_peak_batch(self) -> int | None:
        """The batch size of the forward :meth:`activation_peak_bytes` measured (None if unknown)."""
        return None if self._activation_probe is None else self._activation_probe.batch

    def block_seconds(self) -> dict[str, float] | None:
        """Compute seconds of each block (execution order) in the latest measured forward, or None before one
        was measured. Reading CUDA timings waits for the device: call it where a synchronisation happens anyway
        (end of a prompt)."""
        if self._profiler is not None and not self._profiler.measuring:
            if self._compute_device is not None and self._compute_device.type == "cuda":
                torch.cuda.synchronize(self._compute_device)
            measured = self._profiler.result()
            if measured is not None:
                self._block_seconds = measured
                self._profiler = None  # one measured forward per load is enough
        return self._block_seconds

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
