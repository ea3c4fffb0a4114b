"""JSON lines, the engine's telemetry of one sampling run, and the summary table."""
from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any, Sequence

from .harness import GB

log = logging.getLogger("bench")


def json_default(x: Any) -> Any:
    try:
        return float(x)
    except Exception:
        return repr(x)


class Reporter:
    """Prints one JSON line per case (and appends it to --out); keeps them for the summary table."""

    def __init__(self, out: Path | None) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.out = open(out, "a") if out else None

    def emit(self, record: dict[str, Any]) -> None:
        self.results[record["case"]] = record
        line = json.dumps(record, default=json_default)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()

    def error(self, name: str, exc: BaseException) -> None:
        """The line of a case that raised (call from its `except`): the rest of the run goes on."""
        tb = traceback.format_exc()
        log.error("case %s failed:\n%s", name, tb)
        self.emit({"case": name, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tb[-3000:]})

    def close(self) -> None:
        if self.out:
            self.out.close()
            self.out = None


def bound_s(C: float | None, streamed: int, W: float | None) -> float | None:
    """max(C, streamed / W): no streaming scheme on this link can be faster."""
    if C is None:
        return None
    if not streamed:
        return C
    return max(C, streamed / (W * GB)) if W else None


def case_record(case: str, s: dict[str, Any], streamed: int, resident: int | None, C: float | None,
                W: float | None, vram: dict[str, int | None], extra: dict[str, Any]) -> dict[str, Any]:
    """The fields every sampling case has (in this order), then the case's own."""
    bd = bound_s(C, streamed, W)
    rec = {
        "case": case,
        "s_per_it": s["s_per_it"],
        "streamed_bytes": streamed,
        "W_GBps": W,
        "C_s_per_it": C,
        "bound_s": bd,
        "measured_over_bound": s["s_per_it"] / bd if bd else None,
        "ours_over_native": None,
        **vram,
        "resident_bytes": resident,
        "s_per_it_mean": s["s_per_it_mean"], "s_per_it_min": s["s_per_it_min"], "s_per_it_max": s["s_per_it_max"],
        "timed_steps": s["timed_steps"], "sample_wall_s": s["sample_wall_s"], "finite": s["finite"],
        "first_step_s": s["first_step_s"], "first_over_steady": s["first_over_steady"],
    }
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------------------------------
# telemetry: the registry record (PromptStats.as_dict()) the patcher's OUTER_SAMPLE wrapper wrote
# --------------------------------------------------------------------------------------------------
TOTALS = ("forwards", "seconds_per_forward", "streamed_bytes", "copy_seconds", "stall_seconds", "gbps",
          "overlap", "misses")


def telemetry(stats: dict[str, Any] | None, warmup: int) -> dict[str, Any]:
    """The run's totals, and `timed`: per-forward means over the forwards after the warm-up ones."""
    if stats is None:
        return {"error": "the engine recorded no prompt telemetry for this sampling run"}
    per = stats.get("per_forward") or []
    timed = per[warmup:] if len(per) > warmup else per
    out: dict[str, Any] = {k: stats.get(k) for k in TOTALS}
    if timed:
        out["timed"] = timed_means(timed)
    return out


def timed_means(timed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(timed)
    total = lambda key: sum(f.get(key) or 0 for f in timed)  # noqa: E731
    copy_s, stall_s, forward_s, streamed = total("copy_s"), total("stall_s"), total("forward_s"), total("streamed_bytes")
    return {
        "forwards": n,
        "forward_s": forward_s / n,
        "copy_s": copy_s / n,
        "stall_s": stall_s / n,
        "compute_s_est": (forward_s - stall_s) / n,
        "streamed_bytes": streamed / n,
        "gbps": (streamed / copy_s / GB) if copy_s else None,
        "overlap": max(0.0, 1 - stall_s / copy_s) if copy_s else None,
        "misses": total("misses"),
        "copy_idle_s": total("copy_idle_s") / n,
        "largest_copy_gaps": largest_gaps(timed[-1].get("timeline") or ()),
    }


def largest_gaps(timeline: Any, count: int = 4) -> list[dict[str, float]]:
    """Where the copy stream idled in one forward: the biggest gaps between consecutive copies."""
    spans = sorted((t[0], t[1], i) for i, t in enumerate(timeline))
    gaps = [{"gap_s": nxt[0] - cur[1], "after_copy": cur[2], "at_s": cur[1]} for cur, nxt in zip(spans, spans[1:])]
    return sorted(gaps, key=lambda g: -g["gap_s"])[:count]


# --------------------------------------------------------------------------------------------------
# the summary table
# --------------------------------------------------------------------------------------------------
HEADER = ("case", "s/it", "bound", "x bound", "x native", "streamed GB", "peak GB", "diff")


def fmt(value: Any, spec: str) -> str:
    """A number by a format spec, "-" for anything else (None)."""
    return spec.format(value) if isinstance(value, (int, float)) else "-"


def summary_row(name: str, r: dict[str, Any]) -> tuple[str, ...]:
    return (name, fmt(r["s_per_it"], "{:.3f}"), fmt(r.get("bound_s"), "{:.3f}"),
            fmt(r.get("measured_over_bound"), "{:.2f}"), fmt(r.get("ours_over_native"), "{:.2f}"),
            fmt((r.get("streamed_bytes") or 0) / GB, "{:.2f}"),
            fmt((r.get("peak_vram_bytes") or 0) / GB, "{:.2f}"), fmt(r.get("max_abs_diff_vs_resident"), "{:.2g}"))


def summary(results: dict[str, dict[str, Any]]) -> None:
    """All cases as a table (errors with their message), the last lines printed."""
    rows = [HEADER]
    for name, r in results.items():
        if "s_per_it" in r:
            rows.append(summary_row(name, r))
        elif "error" in r:
            rows.append((name, "ERROR", r["error"][:60], "", "", "", "", ""))
    print(format_table(rows), flush=True)


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows (the first one the header) as left-aligned columns."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
