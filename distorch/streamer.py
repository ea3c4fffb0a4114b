"""The copy pipeline: streamed blocks flow from their arena into a ring of staging slots, ahead of compute.

Copy sequence numbers run ``s = forward_index * N + j`` over the N streamed blocks and never reset, and the
pipeline wraps from the last streamed block of one forward into the first ones of the next (every sampler
step runs the blocks in the same order). Where each block lands is the static :class:`SlotSchedule`:
consecutive small blocks share a slot as one fill, fills take the R slots first-in first-out. Per slot, a
``free`` event is recorded on the compute stream after each block that used it ran, and per slot and position
a ``ready`` event on the copy stream after the copy into it. A copy into a slot waits for ``free``; compute
waits for ``ready``. A fill's copies are issued once the fill that used its slot before has been enqueued to
its last block, so the wait always sees the right ``free`` record, and no host synchronisation happens in
the steady state.

Module tensors of a streamed block point into the arena except while that block runs: its pre-hook
rebinds them to its slot, its (always-called) post-hook rebinds them back. Only block hooks are used,
never a hook on an enclosing module, because the module ComfyUI calls is not always an ancestor whose
forward runs (ComfyUI's BaseModel calls `diffusion_model` from `apply_model`; a Flux text encoder runs
CLIP-L's and T5's encoders one after the other). A pass over the N streamed blocks is one forward.
Anything unexpected (a block out of plan order, a forward cut short by an exception) restarts the
pipeline at that block behind a device-side barrier, so results stay correct; it is counted as a miss
and warned about once.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .donor import BOUNCE, PinnedBounce, choose_route, copy_via_host, peer_available, route_message
from .layout import BlockLayout
from .schedule import SlotSchedule
from .staging import StagingRing
from .telemetry import NullTelemetry, Telemetry

log = logging.getLogger(__name__)


@dataclass
class StreamedBlock:
    """One streamed block: its module, its packed bytes in the arena, and the tensors to rebind."""

    name: str
    module: nn.Module
    layout: BlockLayout
    source: torch.Tensor  # uint8 arena segment: the source of the block's one copy
    targets: tuple[torch.Tensor, ...]  # the module's parameters/buffers, in layout order
    home: tuple[torch.Tensor, ...]  # their arena views, where they point between forwards

    def bind(self, views: Sequence[torch.Tensor]) -> None:
        for target, view in zip(self.targets, views):
            target.data = view  # keeps the Parameter object (and references to it) intact

    def unbind(self) -> None:
        self.bind(self.home)


class SyncCopyBackend:
    """Copies happen on the calling thread at issue time; events are no-ops. For CPU compute."""

    def copy(self, seq: int, slot: int, ready: int, dst: torch.Tensor, src: torch.Tensor,
             telemetry: Telemetry) -> None:
        telemetry.copy_started(seq, src.numel())
        dst.copy_(src)
        telemetry.copy_finished(seq)

    def wait_ready(self, ready: int) -> None:
        pass

    def record_free(self, slot: int) -> None:
        pass

    def barrier(self) -> None:
        pass

    def drain(self) -> None:
        pass

    def release(self) -> None:
        pass


@dataclass
class _CopyPath:
    stream: torch.cuda.Stream  # on the source device for peer copies, else on the compute device
    landing: torch.cuda.Stream | None  # peer copies only: compute-device stream that receives them
    helper: torch.cuda.Stream | None = None  # host copies: a second stream carrying the block's second half
    bounce: PinnedBounce | None = None  # donors without peer access: copies go through these pinned buffers


class CudaCopyBackend:
    """One copy stream per source device, a ``ready`` and a ``free`` event per slot.

    With ``split_host_copies`` a host block is copied as two halves on two streams, joined before ``ready``:
    while kernels run on the compute stream, one DMA stream moved 51.7 GB/s and two 54.6 on the project's
    H100 (bench/h2d_memory_kinds.py), i.e. the link, not the copy engine, is the limit again."""

    def __init__(self, compute_device: torch.device, sources: Iterable[torch.device], slots: int,
                 split_host_copies: bool = True, slot_bytes: int = 0, donor_route: str | None = None,
                 positions: int = 1) -> None:
        self.compute_device = compute_device
        self.paths: dict[torch.device, _CopyPath] = {}
        for source in sources:
            if source.type == "cuda" and source != compute_device:
                # torch's peer copy makes both devices' CURRENT streams wait: give it side streams on
                # both ends so the copy neither waits for nor blocks the compute stream or the donor's default stream.
                path = _CopyPath(torch.cuda.Stream(source), torch.cuda.Stream(compute_device))
                peer = peer_available(compute_device, source)
                route = choose_route(peer, donor_route)
                if route == BOUNCE:
                    path.bounce = PinnedBounce(slots, slot_bytes)
                log.info(route_message(str(compute_device), str(source), route, peer))
                self.paths[source] = path
            else:
                helper = torch.cuda.Stream(compute_device) if split_host_copies else None
                self.paths[source] = _CopyPath(torch.cuda.Stream(compute_device), None, helper)
        self.ready = [torch.cuda.Event() for _ in range(slots * positions)]  # per slot and position in its fill
        self.free = [torch.cuda.Event() for _ in range(slots)]
        self.half_done = [torch.cuda.Event() for _ in range(slots)]

    def _compute_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.compute_device)

    def copy(self, seq: int, slot: int, ready: int, dst: torch.Tensor, src: torch.Tensor,
             telemetry: Telemetry) -> None:
        path = self.paths[src.device]
        # Telemetry marks go on a compute-device stream (the landing stream for donors): timing events of
        # two devices cannot be compared, and the telemetry compares copies with compute.
        landing = path.landing or path.stream
        landing.wait_event(self.free[slot])  # no-op until the slot's first user recorded it
        telemetry.copy_started(seq, src.numel(), landing)
        if path.bounce is not None:
            copy_via_host(path.bounce, slot, dst, src, path.stream, landing, self.free[slot])
        else:
            with torch.cuda.stream(landing), torch.cuda.stream(path.stream):
                if path.landing is not None:  # peer copy: the donor-side stream must wait for the slot too
                    path.stream.wait_event(self.free[slot])
                if path.helper is None:
                    dst.copy_(src, non_blocking=True)
                else:
                    self._copy_in_halves(path, slot, dst, src)
        telemetry.copy_finished(seq, landing)
        self.ready[ready].record(landing)

    def _copy_in_halves(self, path: _CopyPath, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        half = -(-src.numel() // 2 // 256) * 256  # 256-aligned split point
        path.helper.wait_event(self.free[slot])  # the same gate as the main half (no new event per copy)
        with torch.cuda.stream(path.helper):
            dst[half:].copy_(src[half:], non_blocking=True)
            self.half_done[slot].record(path.helper)
        dst[:half].copy_(src[:half], non_blocking=True)
        path.stream.wait_event(self.half_done[slot])

    def wait_ready(self, ready: int) -> None:
        self._compute_stream().wait_event(self.ready[ready])

    def record_free(self, slot: int) -> None:
        self.free[slot].record(self._compute_stream())

    def _all_streams(self) -> list[torch.cuda.Stream]:
        return [s for p in self.paths.values() for s in (p.stream, p.landing, p.helper) if s is not None]

    def barrier(self) -> None:
        """Device-side: compute waits for every copy issued so far, later copies for all compute so far."""
        compute = self._compute_stream()
        for stream in self._all_streams():
            compute.wait_stream(stream)
        for stream in self._all_streams():
            stream.wait_stream(compute)

    def drain(self) -> None:
        """Host waits until no copy is in flight (before the arena is written, unpinned or freed)."""
        for stream in self._all_streams():
            stream.synchronize()

    def release(self) -> None:
        """Unpin the donor bounce buffers (after :meth:`drain`)."""
        for path in self.paths.values():
            if path.bounce is not None:
                path.bounce.release()


def make_backend(compute_device: torch.device, sources: Iterable[torch.device], slots: int,
                 split_host_copies: bool = True, slot_bytes: int = 0, donor_route: str | None = None,
                 positions: int = 1):
    """The CUDA backend when computing on a GPU, else the synchronous one."""
    if compute_device.type == "cuda":
        return CudaCopyBackend(compute_device, sources, slots, split_host_copies, slot_bytes, donor_route, positions)
    return SyncCopyBackend()


class BlockStreamer:
    def __init__(
        self,
        blocks: Sequence[StreamedBlock],
        ring: StagingRing,
        backend: SyncCopyBackend | CudaCopyBackend,
        telemetry: Telemetry | None = None,
        schedule: SlotSchedule | None = None,
    ) -> None:
        if blocks and ring.slots < 1:
            raise ValueError("streaming blocks needs a ring with at least one slot")
        self.blocks = list(blocks)
        self.ring = ring
        self.backend = backend
        self.telemetry = telemetry or NullTelemetry()
        # Without a schedule: one block per slot, the ring of R block slots.
        self.schedule = schedule or SlotSchedule.build([b.source.numel() for b in self.blocks], ring.slot_bytes,
                                                       ring.slots, pack=False)
        self.slots = self.schedule.slots if self.blocks else 0
        self.misses = 0
        self._next_run = 0  # sequence number of the next block expected to run
        self._next_copy = 0  # sequence number of the next copy to issue
        self._running: tuple[int, int, int] | None = None  # (block index, seq, slot) between its hooks
        self._root_marks = False  # forward boundaries come from a forward root's hooks (see attach)
        self._handles: list[Any] = []
        self._warned = False
        self._destinations: dict[tuple[int, int], torch.Tensor] = {}

    # -- wiring -------------------------------------------------------------------------------------
    def attach(self, forward_root: nn.Module | None = None) -> None:
        """Register the hooks and issue the first copies (they overlap whatever runs before the forward).

        ``forward_root``, when given, is the module whose forward is one model forward: it only marks
        forward boundaries for telemetry. Without it a forward is a pass over the streamed blocks."""
        if not self.blocks:
            return
        self._root_marks = forward_root is not None
        if forward_root is not None:
            self._handles.append(forward_root.register_forward_pre_hook(lambda m, a: self.telemetry.forward_started()))
            self._handles.append(forward_root.register_forward_hook(lambda m, a, o: self.telemetry.forward_finished(),
                                                                    always_call=True))
        for index, block in enumerate(self.blocks):
            self._handles.append(block.module.register_forward_pre_hook(self._pre_hook(index)))
            self._handles.append(block.module.register_forward_hook(self._post_hook(index), always_call=True))
        self._issue_ahead()

    def detach(self) -> None:
        """Remove the hooks, point every block back at the arena and wait for in-flight copies."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._running is not None:
            self.blocks[self._running[0]].unbind()
            self._running = None
        self.backend.drain()
        self._destinations.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def quiesce(self) -> None:
        """Host waits until no copy reads the arena: call before writing into it."""
        self.backend.drain()

    def invalidate(self) -> None:
        """The arena changed: drop every prefetched slot and copy again from the next expected block."""
        self.backend.barrier()
        self.telemetry.drop_pending()
        self._next_copy = self._next_run
        self._running = None
        if self.attached:
            self._issue_ahead()

    # -- hooks --------------------------------------------------------------------------------------
    def _pre_hook(self, index: int):
        def hook(module: nn.Module, args: Any) -> None:
            self._block_starting(index)

        return hook

    def _post_hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._block_finished(index)

        return hook

    def _block_starting(self, index: int) -> None:
        if self._running is not None:  # the block before never reached its post-hook (interrupt)
            self.blocks[self._running[0]].unbind()
            self._restart(index, "the previous block was interrupted")
        elif self._next_run % len(self.blocks) != index:
            expected = self.blocks[self._next_run % len(self.blocks)].name
            self._restart(index, f"block {self.blocks[index].name!r} ran where {expected!r} was planned")
        if index == 0 and not self._root_marks:
            self.telemetry.forward_started()
        seq = self._next_run
        slot = self.schedule.slot(seq)
        self.telemetry.block_waiting(seq)
        self.backend.wait_ready(self.schedule.ready_key(seq))
        self.telemetry.block_ready(seq)
        block = self.blocks[index]
        block.bind(self.ring.views(block.layout, slot, self.schedule.offset(seq)))
        self._running = (index, seq, slot)

    def _block_finished(self, index: int) -> None:
        if self._running is None or self._running[0] != index:
            return  # its pre-hook raised: nothing was bound or enqueued for it
        _, seq, slot = self._running
        self._running = None
        self.backend.record_free(slot)
        self.blocks[index].unbind()
        self._next_run = seq + 1
        self._issue_ahead()
        if index == len(self.blocks) - 1 and not self._root_marks:
            self.telemetry.forward_finished()

    # -- pipeline -----------------------------------------------------------------------------------
    def _issue_ahead(self) -> None:
        """Issue every copy whose slot's previous fill has been enqueued to its end (schedule.may_copy)."""
        while self.schedule.may_copy(self._next_copy, self._next_run):
            self._issue(self._next_copy)
            self._next_copy += 1

    def _issue(self, seq: int) -> None:
        index, slot = seq % len(self.blocks), self.schedule.slot(seq)
        block = self.blocks[index]
        dst = self._destinations.get((index, slot))
        if dst is None:
            start = self.schedule.offset(seq)
            dst = self._destinations[(index, slot)] = self.ring.slot(slot)[start : start + block.source.numel()]
        self.backend.copy(seq, slot, self.schedule.ready_key(seq), dst, block.source, self.telemetry)

    def _restart(self, index: int, reason: str) -> None:
        """Start the pipeline over at block ``index``, behind a device-side barrier."""
        self.misses += 1
        self.telemetry.miss()
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"distorch: streaming pipeline restarted: {reason}. Results stay correct, but every restart "
                "copies synchronously; this warning is shown once.",
                RuntimeWarning,
                stacklevel=4,
            )
        log.debug("streaming pipeline restart: %s", reason)
        self.backend.barrier()  # in-flight copies land first; no new copy overtakes enqueued compute
        self.telemetry.drop_pending()
        n = len(self.blocks)
        seq = self._next_copy + (index - self._next_copy) % n  # first seq >= next_copy that runs `index`
        self._next_run = self._next_copy = seq
        self._running = None
        self._issue_ahead()
