"""How long each block computes: one forward timed block by block, for pacing the next plan.

The planner spreads streamed bytes along the execution order; where blocks carry many bytes for little compute
(Flux's double blocks against its single blocks) an even spread by index leaves copies behind in one part of
the model and the link idle in another. The real compute time of each block tells the planner where copies can
hide (distorch.planner.paced_choice). It is measured on the second forward after a load (the first one pays
one-off costs), with marks on the compute stream at every block's pre- and post-hook, registered after the
streamer's hooks, so a streamed block's wait for its copy is not counted. The marks are read when the caller
asks for the result (after a device synchronisation it does anyway, at the end of a prompt).

No hook removes a hook: a forward that raises (an interrupted prompt) makes torch walk the module's hook dict
itself to run the ``always_call`` hooks, and a removal in there breaks that walk ("OrderedDict mutated during
iteration", replacing the user's interrupt; seen on CUDA, where the activation probe's hook follows ours on the
forward root). Hooks only set flags; the handles go at the start of the next forward (the first block's
pre-hooks run from a copy of their dict, so removing hooks there is safe), or in :meth:`result` and :meth:`close`,
called outside forwards, whichever comes first: no hook of ours stays on the per-forward path after its forward.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .telemetry import CudaTimer, WallTimer


class BlockProfiler:
    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], timer: WallTimer | CudaTimer,
                 forward_root: nn.Module | None, skip_forwards: int = 1) -> None:
        self.blocks = list(blocks)
        self.timer = timer
        self._marks: dict[str, list[Any]] = {}
        self._handles: list[Any] = []
        self._skip = skip_forwards
        self._end_handle = None
        self._armed = False
        self._done = False  # the measured forward ran to its end: every hook is a no-op from then on
        if not self.blocks:
            return
        if skip_forwards <= 0:
            self._arm()
            return
        # Arm at the END of a forward: hooks added while a module runs its hooks would miss that very call.
        end_of_forward = forward_root if forward_root is not None else self.blocks[-1][1]
        self._end_handle = end_of_forward.register_forward_hook(self._forward_finished, always_call=True)

    @property
    def measuring(self) -> bool:
        return self._armed and not self._done

    def _forward_finished(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed:
            return
        self._skip -= 1
        if self._skip <= 0:
            self._arm()

    def _arm(self) -> None:
        self._armed = True
        for name, block in self.blocks:
            self._handles.append(block.register_forward_pre_hook(self._mark(name, 0)))
            self._handles.append(block.register_forward_hook(self._mark(name, 1), always_call=True))

    def _mark(self, name: str, which: int):
        first, last = self.blocks[0][0], self.blocks[-1][0]

        def hook(module: nn.Module, *_: Any) -> None:
            if self._done:
                if which == 0 and name == first:
                    self._release()  # the forward after the measured one starts: a safe place to go
                return
            if which == 0 and name == first:
                self._marks.clear()  # a forward cut short before: start over
            marks = self._marks.setdefault(name, [None, None])
            if marks[which] is None:
                marks[which] = self.timer.mark()
            if which == 1 and name == last:
                self._done = True

        return hook

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._end_handle is not None:
            self._end_handle.remove()
            self._end_handle = None

    def result(self) -> dict[str, float] | None:
        """Seconds per block of the measured forward, or None until one forward was measured in full (reading
        CUDA marks needs the work to be done: call after a device synchronisation)."""
        if not self._done or len(self._marks) != len(self.blocks):
            return None
        if any(start is None or end is None for start, end in self._marks.values()):
            return None
        self._release()
        return {name: max(self.timer.seconds(start, end), 0.0) for name, (start, end) in self._marks.items()}

    def close(self) -> None:
        """Remove every hook (an unload before the measured forward finished); outside a forward only."""
        self._release()
