"""distorch.schedule: where each streamed block lands in the staging ring, and when its copy may start."""
import random

import pytest

from distorch.schedule import SlotSchedule

FLUX_LIKE = [680] * 4 + [280] * 8  # doubles then singles, as Flux streams them (MB-ish units)


def test_without_packing_it_is_a_ring_of_block_slots():
    s = SlotSchedule.build(FLUX_LIKE, 680, 2, pack=False)
    assert s.fills == len(FLUX_LIKE) and s.positions == 1
    assert [s.slot(seq) for seq in range(6)] == [0, 1, 0, 1, 0, 1]
    # copy seq may start once seq - R has run, exactly the classic ring rule
    assert all(s.may_copy(seq, next_run) == (seq < next_run + 2) for seq in range(30) for next_run in range(30))


def test_consecutive_small_blocks_share_a_slot_one_after_the_other():
    s = SlotSchedule.build(FLUX_LIKE, 680, 2)
    assert s.fill_of == (0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7)
    assert s.offset_of[4:6] == (0, 280) and s.positions == 2
    assert s.fills == 8 and s.slots == 2


def test_packing_lets_copies_run_further_ahead_over_small_blocks():
    packed, plain = SlotSchedule.build(FLUX_LIKE, 680, 2), SlotSchedule.build(FLUX_LIKE, 680, 2, pack=False)
    running = 4  # the first single block is about to run

    def ahead(schedule):
        seq = running
        while schedule.may_copy(seq, running):
            seq += 1
        return seq - running

    assert ahead(plain) == 2 and ahead(packed) == 4


def test_fill_numbers_wrap_across_forwards():
    s = SlotSchedule.build(FLUX_LIKE, 680, 3)
    n, f = s.blocks, s.fills
    assert s.fill_seq(n) == f and s.fill_seq(n + 5) == f + s.fill_of[5]
    assert s.last_seq_of_fill(f + 4) == n + 5


def test_more_slots_than_fills_uses_one_slot_per_fill():
    s = SlotSchedule.build([100, 100, 100], 680, 3)
    assert s.fills == 1 and s.slots == 1 and [s.offset(i) for i in range(3)] == [0, 100, 200]


def test_a_block_larger_than_a_slot_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        SlotSchedule.build([100, 900], 680, 2)


@pytest.mark.parametrize("seed", range(20))
def test_no_copy_ever_overwrites_bytes_a_block_that_has_not_run_still_needs(seed):
    """The safety property, checked by playing the streamer's rule: copy as far ahead as may_copy allows, run one
    block, repeat, over several forwards; every copy's bytes must belong to no block copied but not yet run."""
    rng = random.Random(seed)
    sizes = [rng.choice([64, 128, 256, 512, 680]) for _ in range(rng.randint(1, 12))]
    schedule = SlotSchedule.build(sizes, 680, rng.randint(1, 4), pack=rng.random() < 0.8)
    copied_not_run: list[tuple[int, int, int]] = []  # (slot, start, end) of copies whose block has not run
    next_run = next_copy = 0
    for _ in range(schedule.blocks * 4):
        while schedule.may_copy(next_copy, next_run):
            slot, start = schedule.slot(next_copy), schedule.offset(next_copy)
            end = start + sizes[next_copy % schedule.blocks]
            assert end <= 680
            assert not any(s == slot and a < end and start < b for s, a, b in copied_not_run), "overwrote live bytes"
            copied_not_run.append((slot, start, end))
            next_copy += 1
        assert next_copy > next_run, "deadlock: the block about to run was never copied"
        copied_not_run.pop(0)
        next_run += 1
