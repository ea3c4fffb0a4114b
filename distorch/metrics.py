"""Streaming metrics in the Prometheus text exposition format, version 0.0.4 (served at ``GET /distorch/metrics``).

Format, as the spec has it: per metric a ``# HELP <name> <text>`` line, a ``# TYPE <name> <counter|gauge>``
line, then one ``<name>{<label>="<value>",...} <number>`` line per sample; label values escape ``\\``, ``"``
and newline, HELP text escapes ``\\`` and newline. Counters end in ``_total`` and never go down: their values
come from the registry's running totals, which outlive engines, model unloads and the recent-prompt window.

What is counted comes from the per-prompt telemetry records (distorch.telemetry, written after each sampling
run of a streaming model), so copies made outside sampling (a streamed text encoder encoding a prompt) are
not in the counters; the gauges read the live engines.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Metric:
    """One metric family: its samples are ``(labels, value)`` pairs (labels may be empty)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: tuple[tuple[Labels, float], ...]

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.kind not in ("counter", "gauge"):
            raise ValueError(f"metric {self.name}: kind must be counter or gauge, got {self.kind!r}")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")
        for labels, _ in self.samples:
            bad = [name for name in labels if not _LABEL_NAME.fullmatch(name) or name.startswith("__")]
            if bad:
                raise ValueError(f"metric {self.name}: invalid label name(s) {bad}")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers exactly, floats in shortest round-trip form, ``+Inf``/``-Inf``/``NaN``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a sample value must be a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _sample_line(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    pairs = ",".join(f'{key}="{escape_label_value(str(text))}"' for key, text in labels.items())
    return f"{name}{{{pairs}}} {format_value(value)}"


def exposition(metrics: Sequence[Metric]) -> str:
    """The text exposition of ``metrics``, in order, ending with a newline (empty text for no metrics)."""
    names = [metric.name for metric in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique, got {names}")
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        lines.extend(_sample_line(metric.name, labels, value) for labels, value in metric.samples)
    return "".join(line + "\n" for line in lines)


# --- what the project exposes ----------------------------------------------------------------------------
# (registry total, metric name, help) for every counter; the totals are kept by distorch.registry.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("prompts", "distorch_prompts_total", "Sampling runs of DisTorch streaming models (one per prompt and model)."),
    ("forwards", "distorch_forwards_total", "Model forwards that streamed weights, during sampling."),
    ("streamed_bytes", "distorch_streamed_bytes_total",
     "Weight bytes copied from stores to compute devices by streamed blocks, during sampling."),
    ("copy_seconds", "distorch_copy_seconds_total", "Seconds the copy streams spent copying streamed blocks."),
    ("stall_seconds", "distorch_stall_seconds_total", "Seconds compute waited for a streamed block's copy."),
    ("misses", "distorch_misses_total",
     "Copy pipeline restarts (a block ran out of plan order, or a forward was cut short)."),
)


def project_metrics(totals: Mapping[str, float], engines: Sequence[Any], pinned_bytes: int) -> list[Metric]:
    """The project's metrics from the registry's running ``totals``, the live ``engines`` (each with ``name``,
    ``plan``, ``is_loaded``) and the host bytes they page-locked."""
    metrics = [Metric(name, "counter", text, (({}, totals[key]),)) for key, name, text in COUNTERS]
    resident: dict[str, int] = {}
    streamed: dict[str, int] = {}
    for engine in engines:  # engines of one model file add up: one series per model label
        resident[engine.name] = resident.get(engine.name, 0) + (engine.plan.resident_bytes if engine.is_loaded else 0)
        streamed[engine.name] = streamed.get(engine.name, 0) + engine.plan.streamed_bytes
    metrics += [
        Metric("distorch_pinned_host_bytes", "gauge", "Host RAM bytes page-locked by live engines.",
               (({}, pinned_bytes),)),
        Metric("distorch_live_engines", "gauge", "DisTorch streaming engines whose model is alive.",
               (({}, len(engines)),)),
        Metric("distorch_model_resident_bytes", "gauge",
               "Weight bytes kept on the compute device (resident blocks and other modules; 0 while unloaded).",
               tuple(({"model": name}, nbytes) for name, nbytes in sorted(resident.items()))),
        Metric("distorch_model_streamed_bytes", "gauge",
               "Weight bytes held in stores and streamed to the compute device every forward.",
               tuple(({"model": name}, nbytes) for name, nbytes in sorted(streamed.items()))),
    ]
    return metrics


def render(registry: Any) -> str:
    """The exposition of the project's metrics, read from ``registry`` (distorch.registry.Registry)."""
    engines = registry.live_engines()
    return exposition(project_metrics(registry.streaming_totals(), engines,
                                      sum(engine.pinned_bytes for engine in engines)))
