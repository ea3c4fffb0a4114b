"""The activation peak probe: which forward it measures and what it reports.

The allocator counters are torch.cuda's; on this CPU machine they are played by a counter the test forward
moves (the probe's arithmetic and hook logic are what is specified here; tests/gpu measures a real forward).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distorch.activation_peak import ActivationPeakProbe

CUDA = torch.device("cuda", 0)


class FakeAllocator:
    def __init__(self) -> None:
        self.allocated, self.peak = 1000, 1000

    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes


class Forward(nn.Module):
    """Allocates ``temporary`` bytes for a while and keeps ``kept`` bytes (an output) each call."""

    def __init__(self, allocator: FakeAllocator, temporary: int, kept: int) -> None:
        super().__init__()
        self.allocator, self.temporary, self.kept, self.fail = allocator, temporary, kept, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.allocator.alloc(self.temporary)
        if self.fail:
            raise RuntimeError("interrupted")
        self.allocator.free(self.temporary)
        self.allocator.alloc(self.kept)
        return x


@pytest.fixture
def allocator(monkeypatch) -> FakeAllocator:
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: fake.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(fake, "peak", fake.allocated))
    return fake


def test_the_second_forward_is_measured_above_what_was_allocated_as_it_started(allocator):
    model = Forward(allocator, temporary=500, kept=20)
    allocator.alloc(5000)  # an earlier, higher peak (the load) must not count
    allocator.free(5000)
    probe = ActivationPeakProbe(CUDA, model)
    model(torch.zeros(1))
    assert probe.peak_bytes is None and probe.measuring  # the first forward pays one-off costs: skipped
    model.temporary = 700
    model(torch.zeros(1))
    assert probe.peak_bytes == 700 and not probe.measuring  # measured once, hooks gone
    model.temporary = 9000
    model(torch.zeros(1))
    assert probe.peak_bytes == 700


def test_a_forward_that_raises_is_not_a_measurement(allocator):
    model = Forward(allocator, temporary=300, kept=0)
    probe = ActivationPeakProbe(CUDA, model, skip_forwards=0)
    model.fail = True
    with pytest.raises(RuntimeError):
        model(torch.zeros(1))
    assert probe.peak_bytes is None
    allocator.free(300)
    model.fail, model.temporary = False, 400
    model(torch.zeros(1))
    assert probe.peak_bytes == 400


def test_on_a_cpu_nothing_is_hooked_or_measured():
    model = nn.Linear(2, 2)
    probe = ActivationPeakProbe(torch.device("cpu"), model, skip_forwards=0)
    model(torch.zeros(1, 2))
    assert probe.peak_bytes is None and not probe.measuring
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_close_removes_the_hooks(allocator):
    model = Forward(allocator, temporary=1, kept=0)
    probe = ActivationPeakProbe(CUDA, model)
    probe.close()
    assert not model._forward_hooks and not model._forward_pre_hooks and not probe.measuring
