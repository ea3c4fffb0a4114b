"""How streamed blocks held in a donor GPU's memory reach the compute GPU.

With peer access the copy goes straight from the donor's VRAM into the compute GPU's staging slot, issued on a
donor-side stream (never the donor's default stream, where the donor's own work runs). Without peer access
the copies bounce through a small ring of pinned host buffers: donor -> host on the donor's copy stream, then
host -> compute on a compute-side stream. We bounce rather than move those blocks into the pinned host arena
because a donor store exists to spare host RAM (the allocation string put those bytes on the donor on purpose),
and a bounce costs no extra bandwidth: the second hop uses the compute GPU's x16 link, which any copy from a
donor without peer access crosses anyway (topology.classify_donor puts such a path in the host's group), and
the first hop runs on the donor's own link, overlapped with the previous block's second hop.
"""
from __future__ import annotations

import logging

import torch

from . import pinning

log = logging.getLogger(__name__)

PEER = "peer"
BOUNCE = "bounce"


def choose_route(peer_available: bool, force: str | None = None) -> str:
    """``peer`` or ``bounce``; ``force`` (EngineOptions.donor_route) overrides, e.g. to test the fallback."""
    if force not in (None, PEER, BOUNCE):
        raise ValueError(f"donor route must be None, {PEER!r} or {BOUNCE!r}, got {force!r}")
    if force == PEER and not peer_available:
        raise ValueError("peer copies were forced but this donor has no peer access to the compute device")
    return force or (PEER if peer_available else BOUNCE)


def route_message(compute: str, donor: str, route: str, peer_available: bool) -> str:
    """The log line saying how a donor's blocks travel."""
    if route == PEER:
        return (f"[DisTorch] donor {donor} -> {compute}: peer-to-peer copies on a {donor} copy stream "
                f"(never {donor}'s default stream)")
    why = "no peer access" if not peer_available else "bounce forced"
    return (f"[DisTorch] donor {donor} -> {compute}: {why}: copies go through pinned host memory "
            f"({donor} -> host on a {donor} copy stream, host -> {compute} on a {compute} stream); "
            f"this path shares {compute}'s PCIe link with host streaming: it adds capacity, not bandwidth")


def peer_available(compute: torch.device, donor: torch.device) -> bool:
    return bool(torch.cuda.can_device_access_peer(compute.index, donor.index))


class PinnedBounce:
    """``slots`` host buffers of ``slot_bytes``, page-locked in place (exact size: ``pin_memory=True`` would
    round a 2 GB request up to a power of two). One per donor path without peer access."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.buffer = torch.empty(max(slots * slot_bytes, 1), dtype=torch.uint8)
        error = pinning.register(self.buffer.data_ptr(), self.buffer.numel())
        self._registered = error is None
        if not self._registered:
            # pinned either way: the caching allocator's copy only wastes RAM by rounding up
            log.warning("the %d-byte donor bounce ring stays unregistered (%s); using pin_memory", self.buffer.numel(), error)
            self.buffer = torch.empty(self.buffer.numel(), dtype=torch.uint8, pin_memory=True)
        self.full = [torch.cuda.Event() for _ in range(slots)]  # donor -> host hop done
        self.free = [torch.cuda.Event() for _ in range(slots)]  # host -> compute hop done: slot reusable

    def slot(self, index: int, nbytes: int) -> torch.Tensor:
        start = index * self.slot_bytes
        return self.buffer[start : start + nbytes]

    def release(self) -> None:
        """Unpin (the caller has drained every copy that reads or writes the buffer)."""
        if self._registered:
            self._registered = False
            pinning.unregister(self.buffer.data_ptr())

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def copy_via_host(bounce: PinnedBounce, slot: int, dst: torch.Tensor, src: torch.Tensor,
                  donor_stream: torch.cuda.Stream, landing: torch.cuda.Stream, slot_free: torch.cuda.Event) -> None:
    """Two hops, no host synchronisation. Event waits see the latest record enqueued before them, and copies are
    issued in sequence order, so ``bounce.free[slot]`` is the previous hop 2 out of this bounce slot."""
    hop = bounce.slot(slot, src.numel())
    donor_stream.wait_event(bounce.free[slot])  # the previous block through this bounce slot has left it
    with torch.cuda.stream(donor_stream):  # D2H runs on the source device's current stream: the donor copy stream
        hop.copy_(src, non_blocking=True)
        bounce.full[slot].record(donor_stream)
    landing.wait_event(slot_free)  # the staging slot's previous block has run
    landing.wait_event(bounce.full[slot])
    with torch.cuda.stream(landing):  # H2D runs on the destination device's current stream
        dst.copy_(hop, non_blocking=True)
        bounce.free[slot].record(landing)
