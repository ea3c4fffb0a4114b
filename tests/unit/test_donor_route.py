"""The two-hop donor copy without peer access: event order checked with recording fakes (no GPU needed)."""
import contextlib

import torch

from distorch import donor
from distorch.donor import PinnedBounce, copy_via_host


class Recorder:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def wait_event(self, event):
        self.log.append((self.name, "wait", event.name))

    def record(self, stream):
        self.log.append((stream.name, "record", self.name))


def test_bounce_hops_wait_for_the_slot_and_for_each_other_in_order(monkeypatch):
    log, current = [], []

    @contextlib.contextmanager
    def on(stream):
        current.append(stream.name)
        yield
        current.pop()

    monkeypatch.setattr(donor.torch.cuda, "stream", on)
    bounce = object.__new__(PinnedBounce)
    bounce.slot_bytes, bounce.buffer = 16, torch.zeros(32, dtype=torch.uint8)
    bounce.full = [Recorder(log, f"full{i}") for i in range(2)]
    bounce.free = [Recorder(log, f"bfree{i}") for i in range(2)]
    donor_stream, landing = Recorder(log, "donor"), Recorder(log, "landing")
    src, dst = torch.arange(10, dtype=torch.uint8), torch.zeros(10, dtype=torch.uint8)

    copy_via_host(bounce, 1, dst, src, donor_stream, landing, Recorder(log, "slot_free1"))
    assert torch.equal(dst, src) and torch.equal(bounce.buffer[16:26], src)
    assert log == [
        ("donor", "wait", "bfree1"),  # hop 1 only after the previous hop 2 left this bounce slot
        ("donor", "record", "full1"),
        ("landing", "wait", "slot_free1"),  # hop 2 only into a free staging slot
        ("landing", "wait", "full1"),  # ... and after hop 1 landed
        ("landing", "record", "bfree1"),
    ]
    assert bounce.buffer[:16].sum() == 0  # slot 0 untouched
