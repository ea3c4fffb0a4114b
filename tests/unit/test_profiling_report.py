"""bench/flux/profiling.py's gap report: idle time on the compute stream, told apart by where and why."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from flux.profiling import FORWARD_RANGE, gap_report  # noqa: E402


def kernel(name, ts, dur, corr, stream=7):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "tid": stream,
            "args": {"correlation": corr}}


def launch(ts, corr, name="cudaLaunchKernel", dur=5):
    return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def forward(ts, dur):
    return {"ph": "X", "cat": "user_annotation", "name": FORWARD_RANGE, "ts": ts, "dur": dur}


def test_a_kernel_launched_early_but_started_late_waited_on_the_device():
    events = [forward(0, 500), launch(10, 1), kernel("a", 100, 100, 1), launch(20, 2), kernel("b", 300, 100, 2)]
    report = gap_report(events)
    assert report["idle_us"] == {"forward_device_wait_us": 100}
    assert report["busy_us"] == 200 and report["span_us"] == 300


def test_a_kernel_launched_after_the_stream_went_idle_was_late_on_the_host_and_says_what_the_host_did():
    events = [forward(0, 150), launch(10, 1), kernel("a", 100, 100, 1),
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 210, "dur": 300, "args": {}},
              {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 205, "dur": 310},
              forward(600, 200), launch(610, 2), kernel("b", 620, 100, 2)]
    report = gap_report(events)
    assert report["idle_us"] == {"forward_host_late_us": 420}  # the next kernel's launch fell in a forward
    gap = report["largest_gaps"][0]
    assert gap["why"] == "host_late" and gap["runtime_us"] == {"cudaStreamSynchronize": 300}
    assert gap["cpu_ops_us"]["aten::item"] == 310


def test_gaps_whose_next_kernel_was_launched_outside_a_forward_count_as_between_forwards():
    events = [forward(0, 150), launch(10, 1), kernel("a", 100, 100, 1), launch(400, 2), kernel("b", 410, 10, 2)]
    assert gap_report(events)["idle_us"] == {"between_host_late_us": 210}


def test_copies_on_other_streams_are_not_compute_idle_and_a_cpu_trace_has_no_report():
    events = [launch(10, 1), kernel("a", 100, 100, 1), launch(20, 2), kernel("b", 200, 50, 2),
              {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": 250, "dur": 500, "tid": 9, "args": {}}]
    assert gap_report(events)["idle_us"] == {}
    assert "note" in gap_report([forward(0, 10)])


def test_idle_before_a_pageable_copy_on_the_compute_stream_is_counted_apart():
    copy = {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "ts": 300, "dur": 10, "tid": 7,
            "args": {"correlation": 2}}
    report = gap_report([forward(0, 500), launch(10, 1), kernel("a", 100, 100, 1), launch(20, 2), copy])
    assert report["pageable_copies_on_compute_stream"] == 1
    assert report["idle_us"] == {"forward_device_wait_us": 100, "before_pageable_copies_us": 100}
