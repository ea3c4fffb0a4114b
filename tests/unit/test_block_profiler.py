"""distorch.profile.BlockProfiler: one forward timed block by block, without disturbing forwards that raise."""
import pytest
import torch
from torch import nn

from distorch.profile import BlockProfiler
from distorch.telemetry import WallTimer


class Cancelled(Exception):
    pass


def _cancel(module, args):
    raise Cancelled("user pressed cancel")


def _model() -> tuple[nn.Sequential, list[tuple[str, nn.Module]]]:
    root = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    return root, [(str(i), block) for i, block in enumerate(root)]


def test_the_second_forward_is_timed_block_by_block_and_then_every_hook_is_gone():
    root, blocks = _model()
    profiler = BlockProfiler(blocks, WallTimer(), root)
    root(torch.ones(1, 4))
    assert profiler.measuring and profiler.result() is None
    root(torch.ones(1, 4))
    seconds = profiler.result()
    assert seconds is not None and set(seconds) == {"0", "1", "2"} and all(s >= 0 for s in seconds.values())
    assert not root._forward_hooks and all(not b._forward_hooks and not b._forward_pre_hooks for _, b in blocks)


@pytest.mark.parametrize("cancelled_block", [0, 2])
@pytest.mark.parametrize("forward", [1, 2])  # the skipped forward, the measured one
def test_a_cancelled_forward_raises_the_cancel_itself_with_other_hooks_beside_ours(cancelled_block, forward):
    # On CUDA the activation probe's hook follows ours on the forward root, and the streamer's always-called
    # hooks sit beside ours on every block: torch walks those dicts while a forward raises, so no hook of ours
    # may remove one then (it once replaced the user's cancel with "OrderedDict mutated during iteration").
    root, blocks = _model()
    profiler = BlockProfiler(blocks, WallTimer(), root)
    root.register_forward_hook(lambda *args: None)
    for _, block in blocks:
        block.register_forward_hook(lambda *args: None, always_call=True)
    for _ in range(forward - 1):
        root(torch.ones(1, 4))
    handle = blocks[cancelled_block][1].register_forward_pre_hook(_cancel)
    with pytest.raises(Cancelled):
        root(torch.ones(1, 4))
    handle.remove()
    root(torch.ones(1, 4))
    root(torch.ones(1, 4))
    assert profiler.result() is not None


def test_close_before_the_measured_forward_removes_every_hook():
    root, blocks = _model()
    profiler = BlockProfiler(blocks, WallTimer(), root)
    root(torch.ones(1, 4))
    profiler.close()
    assert not root._forward_hooks and all(not b._forward_hooks and not b._forward_pre_hooks for _, b in blocks)


def test_no_hook_of_ours_stays_on_the_forward_path_after_the_measured_forward():
    root, blocks = _model()
    profiler = BlockProfiler(blocks, WallTimer(), root)
    for _ in range(3):  # skipped, measured, and the next one, which starts by removing every hook
        root(torch.ones(1, 4))
    assert not root._forward_hooks and all(not b._forward_hooks and not b._forward_pre_hooks for _, b in blocks)
    assert profiler.result() is not None
