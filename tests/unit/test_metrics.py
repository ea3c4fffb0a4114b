"""distorch.metrics: the Prometheus text exposition (version 0.0.4) of the streaming counters and gauges."""
import gc
import math

import pytest
import torch

from distorch.engine import StreamingEngine
from distorch.metrics import CONTENT_TYPE, Metric, escape_label_value, exposition, format_value, project_metrics, render
from distorch.registry import REGISTRY, Registry
from streaming_helpers import inputs, plan_streaming
from toy_models import make_model


class FakeEngine:
    def __init__(self, name: str, resident: int, streamed: int, loaded: bool = True) -> None:
        self.name, self.is_loaded, self.pinned_bytes = name, loaded, 0
        self.plan = type("Plan", (), {"resident_bytes": resident, "streamed_bytes": streamed})()


def test_each_metric_is_help_then_type_then_its_samples():
    text = exposition([
        Metric("jobs_total", "counter", "Jobs done.", (({}, 3),)),
        Metric("queue_bytes", "gauge", "Bytes queued.", (({"queue": "a"}, 1.5), ({"queue": "b"}, 0))),
    ])
    assert text == ("# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n"
                    "# HELP queue_bytes Bytes queued.\n# TYPE queue_bytes gauge\n"
                    'queue_bytes{queue="a"} 1.5\nqueue_bytes{queue="b"} 0\n')


def test_label_values_escape_backslash_quote_and_newline():
    assert escape_label_value('C:\\models\\"odd"\nname') == 'C:\\\\models\\\\\\"odd\\"\\nname'
    text = exposition([Metric("m", "gauge", "a\\b\nc", (({"model": 'x"y'}, 1),))])
    assert "# HELP m a\\\\b\\nc\n" in text and 'm{model="x\\"y"} 1\n' in text


@pytest.mark.parametrize("value, text", [(0, "0"), (12_345_678_901, "12345678901"), (0.25, "0.25"),
                                         (1e-05, "1e-05"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")])
def test_sample_values_are_exact_numbers_or_the_specs_special_values(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("make", [
    lambda: Metric("jobs", "counter", "a counter without _total", ()),
    lambda: Metric("bad-name", "gauge", "", ()),
    lambda: Metric("m", "summary", "", ()),
    lambda: Metric("m", "gauge", "", (({"__reserved": "x"}, 1),)),
    lambda: exposition([Metric("m", "gauge", "", ()), Metric("m", "gauge", "", ())]),
    lambda: format_value(True),
])
def test_malformed_metrics_are_refused_before_anything_is_served(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_engines_of_one_model_add_up_and_an_unloaded_engine_holds_nothing_resident():
    totals = dict.fromkeys(["prompts", "forwards", "streamed_bytes", "copy_seconds", "stall_seconds", "misses"], 0)
    engines = [FakeEngine("flux.safetensors", 100, 40), FakeEngine("flux.safetensors", 100, 40, loaded=False),
               FakeEngine('we"ird', 7, 0)]
    by_name = {m.name: m for m in project_metrics(totals, engines, pinned_bytes=80)}
    assert by_name["distorch_model_resident_bytes"].samples == (({"model": "flux.safetensors"}, 100),
                                                                 ({"model": 'we"ird'}, 7))
    assert by_name["distorch_model_streamed_bytes"].samples[0] == ({"model": "flux.safetensors"}, 80)
    assert by_name["distorch_live_engines"].samples == (({}, 3),)
    assert by_name["distorch_pinned_host_bytes"].samples == (({}, 80),)
    assert all(m.name.endswith("_total") for m in by_name.values() if m.kind == "counter")


def test_registry_totals_add_every_recorded_prompt_even_after_the_recent_window_drops_it():
    registry = Registry()
    for _ in range(25):  # more than the 20 recent prompts the web view keeps
        registry.record_prompt_stats({"forwards": 2, "streamed_bytes": 10, "copy_seconds": 0.5, "stall_seconds": 0.25,
                                      "misses": 1})
    assert registry.streaming_totals() == {"prompts": 25, "forwards": 50, "streamed_bytes": 250, "copy_seconds": 12.5,
                                           "stall_seconds": 6.25, "misses": 25}
    assert len(registry.recent_prompt_stats()) == 20


def _counters() -> dict[str, float]:
    lines = [line.split(" ") for line in render(REGISTRY).splitlines() if line.startswith("distorch_")]
    return {name: float(value) for name, value in lines if name.endswith("_total")}


def test_counters_never_go_down_when_an_engine_and_its_model_are_gone():
    model = make_model()
    engine = StreamingEngine(model, plan_streaming(model, 5), name="gone.safetensors")
    engine.load("cpu")
    with torch.no_grad():
        for x in inputs(torch.float32, count=2):
            model(x)
    REGISTRY.record_prompt_stats(engine.telemetry.summary().as_dict())
    before = _counters()
    assert 'distorch_model_streamed_bytes{model="gone.safetensors"}' in render(REGISTRY)
    del model, engine
    gc.collect()
    assert 'model="gone.safetensors"' not in render(REGISTRY)
    assert _counters() == before and before["distorch_streamed_bytes_total"] > 0


def test_the_content_type_is_the_text_format_version_0_0_4():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
