"""distorch.telemetry: per-forward copy/compute stats, read after the fact."""
import json

import torch

from distorch.telemetry import ForwardStats, PromptStats
from streaming_helpers import inputs, loaded_engine
from toy_models import make_model


def run(model, xs):
    with torch.no_grad():
        return [model(x) for x in xs]


def test_one_stats_entry_per_forward_with_every_streamed_block_copied():
    model = make_model()
    engine = loaded_engine(model, 5)
    run(model, inputs(torch.float32, count=3))
    stats = engine.telemetry.summary()
    assert len(stats.forwards) == 3
    assert all(f.copies == 5 for f in stats.forwards)
    assert stats.streamed_bytes == 3 * engine.plan.streamed_bytes


def test_summary_reports_only_forwards_since_the_last_summary():
    model = make_model()
    engine = loaded_engine(model, 5)
    run(model, inputs(torch.float32, count=2))
    engine.telemetry.summary()
    run(model, inputs(torch.float32, count=1))
    assert len(engine.telemetry.summary().forwards) == 1


def test_misses_are_counted_in_the_forward_they_happened_in():
    model = make_model()
    model.order = list(reversed(range(10)))
    engine = loaded_engine(model, 5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run(model, inputs(torch.float32, count=2))
    assert engine.telemetry.summary().misses > 0


def test_synchronous_copies_count_as_not_overlapped():
    model = make_model()
    engine = loaded_engine(model, 5)
    run(model, inputs(torch.float32, count=1))
    assert engine.telemetry.summary().overlap == 0.0


def test_overlap_is_the_share_of_copy_time_compute_did_not_wait_for():
    stats = ForwardStats(index=0, forward_s=1.0, copy_s=0.4, stall_s=0.1, streamed_bytes=20 * 10**9, copies=4, misses=0)
    assert abs(stats.overlap - 0.75) < 1e-12
    assert abs(stats.gbps - 50.0) < 1e-9


def test_as_dict_is_json_serialisable():
    model = make_model()
    engine = loaded_engine(model, 5)
    run(model, inputs(torch.float32, count=2))
    data = json.loads(json.dumps(engine.telemetry.summary().as_dict()))
    assert data["forwards"] == 2 and len(data["per_forward"]) == 2


def test_console_line_names_the_key_numbers():
    stats = PromptStats((ForwardStats(0, 0.25, 0.2, 0.0, 10**10, 5, 1),))
    line = stats.console_line()
    assert "1 forwards" in line and "0.250 s/forward" in line and "10.00 GB" in line
    assert "50.0 GB/s" in line and "overlap 100%" in line and "misses 1" in line


def test_disabled_telemetry_reports_nothing():
    model = make_model()
    engine = loaded_engine(model, 5, telemetry=False)
    run(model, inputs(torch.float32, count=2))
    assert engine.telemetry.summary().forwards == ()
