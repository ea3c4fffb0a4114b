"""distorch.pipeline_model: a plan's steady-state forward, replayed with the streamer's slot schedule."""
import pytest

from distorch.pipeline_model import simulate_forward


def test_nothing_streamed_costs_the_compute():
    estimate = simulate_forward([1.0, 2.0], [0, 0], slot_bytes=1, ring_slots=2, bandwidth_bytes_per_s=1.0,
                                other_seconds=0.5)
    assert estimate.forward_s == estimate.compute_s == 3.5 and estimate.transfer_s == 0


def test_copies_shorter_than_every_block_are_hidden_entirely():
    estimate = simulate_forward([1.0] * 6, [1] * 6, slot_bytes=1, ring_slots=2, bandwidth_bytes_per_s=2.0)
    assert estimate.forward_s == pytest.approx(6.0) and estimate.compute_wait_s == pytest.approx(0.0)


def test_copies_longer_than_every_block_keep_the_link_busy_and_set_the_pace():
    estimate = simulate_forward([1.0] * 6, [3] * 6, slot_bytes=3, ring_slots=2, bandwidth_bytes_per_s=1.0)
    assert estimate.forward_s == pytest.approx(18.0) and estimate.link_idle_s == pytest.approx(0.0)


@pytest.mark.parametrize("slots, forward_s", [(3, 5.0), (4, 5.0), (2, 6.0)])
def test_a_heavy_stretch_then_a_light_one_needs_staging_to_reach_max_of_compute_and_transfer(slots, forward_s):
    """Two heavy blocks (copy 2, compute 1), then two light ones (copy 0.5 each, compute 1.5 each; one fill):
    compute 5 and transfer 5 per forward. With 3 slots the light fill's spare link time prefetches both heavy
    blocks of the next forward: 5. With 2, while the light fill computes (3 -> 6) the link copies the next
    first heavy block (3 -> 5) but the second one's slot is the light fill's, free only at 6: it lands at 8,
    an idle 1 for compute after the first heavy block (6 -> 7): 6 per forward."""
    estimate = simulate_forward([1.0, 1.0, 1.5, 1.5], [2, 2, 0.5, 0.5], slot_bytes=2, ring_slots=slots,
                                bandwidth_bytes_per_s=1.0)
    assert estimate.compute_s == estimate.transfer_s == 5.0
    assert estimate.forward_s == pytest.approx(forward_s)


def test_one_compute_time_per_block_is_required():
    with pytest.raises(ValueError, match="one compute time"):
        simulate_forward([1.0], [1, 1], slot_bytes=1, ring_slots=1, bandwidth_bytes_per_s=1.0)
