"""PNG plots of load-test runs.

``write_plots`` draws what its runs support:

* ``latency_cdf.png``: CDFs of TTFT, TPOT, ITL and E2EL, one line per run;
* ``latency_over_time.png``: TTFT at each request's start and every ITL gap at its
  chunk's arrival, over the run;
* ``sweep.png``: output throughput and TTFT/TPOT median (solid) and p99 (dashed) against
  the swept level, one line per target, when a target was run at two levels or more;
* ``targets.png``: side-by-side bars of key metrics, one bar per target (grouped by
  level), when there is more than one target.

The first two need request records: a ``RunResult``, or a document written with
``include_records=True``. Figures are drawn on ``matplotlib.figure.Figure`` objects with
an Agg canvas, so no pyplot or global backend state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtests.metrics import RequestLatency, Summary, request_latency, summarize
from loadtests.records import RequestRecord, RunResult
from loadtests.report import (
    format_level,
    records_of,
    run_documents,
    run_label,
    summary_of,
    summary_value,
)

Plottable = RunResult | Mapping[str, Any]
"""A ``RunResult``, a run document or a collection."""

_LATENCIES = ("TTFT", "TPOT", "ITL", "E2EL")
_BARS = (
    ("output tok/s", "output_throughput", ""),
    ("TTFT median (ms)", "ttft_ms", "median"),
    ("TTFT p99 (ms)", "ttft_ms", "p99"),
    ("TPOT median (ms)", "tpot_ms", "median"),
    ("TPOT p99 (ms)", "tpot_ms", "p99"),
    ("E2EL p99 (ms)", "e2el_ms", "p99"),
)


@dataclass(frozen=True)
class _Run:
    label: str
    target: str
    level: float | str | None
    summary: Summary
    latencies: list[RequestLatency] | None


def write_plots(runs: Plottable | Sequence[Plottable], out_dir: str | Path) -> list[Path]:
    """Write the PNG plots that ``runs`` support into ``out_dir``; return their paths."""
    items = _normalize(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    detailed = [run for run in items if run.latencies is not None]
    if detailed:
        written.append(_save(_cdf_figure(detailed), out / "latency_cdf.png"))
        written.append(_save(_over_time_figure(detailed), out / "latency_over_time.png"))
    swept = _sweeps(items)
    if swept:
        written.append(_save(_sweep_figure(swept), out / "sweep.png"))
    if len({run.target for run in items}) > 1:
        written.append(_save(_targets_figure(items), out / "targets.png"))
    return written


def _normalize(runs: Plottable | Sequence[Plottable]) -> list[_Run]:
    items = [runs] if isinstance(runs, RunResult | Mapping) else list(runs)
    normalized: list[_Run] = []
    for item in items:
        if isinstance(item, RunResult):
            label = run_label({"target": item.target, "level": item.level})
            run = _Run(label, item.target, item.level, summarize(item), _latencies(item.records))
            normalized.append(run)
            continue
        for doc in run_documents(item):
            records = records_of(doc)
            latencies = None if records is None else _latencies(records)
            target, level = str(doc["target"]), doc.get("level")
            normalized.append(_Run(run_label(doc), target, level, summary_of(doc), latencies))
    return normalized


def _latencies(records: list[RequestRecord]) -> list[RequestLatency]:
    return [lat for r in records if (lat := request_latency(r)) is not None]


def _samples_ms(latencies: list[RequestLatency], metric: str) -> list[float]:
    if metric == "TTFT":
        values = [lat.ttft for lat in latencies]
    elif metric == "TPOT":
        values = [lat.tpot for lat in latencies if lat.tpot is not None]
    elif metric == "ITL":
        values = [gap for lat in latencies for gap in lat.itls]
    else:
        values = [lat.e2el for lat in latencies]
    return [v * 1000 for v in values]


def _cdf_figure(runs: list[_Run]) -> Figure:
    fig = Figure(figsize=(11, 8), layout="constrained")
    for ax, metric in zip(fig.subplots(2, 2).flat, _LATENCIES, strict=True):
        for run in runs:
            values = np.sort(_samples_ms(run.latencies or [], metric))
            if values.size:
                ax.step(
                    values,
                    np.arange(1, values.size + 1) / values.size,
                    where="post",
                    label=run.label,
                )
        _decorate(ax, f"{metric} CDF", f"{metric} (ms)", "fraction of samples")
    return fig


def _over_time_figure(runs: list[_Run]) -> Figure:
    fig = Figure(figsize=(11, 7), layout="constrained")
    ttft_ax, itl_ax = fig.subplots(2, 1, sharex=True)
    for run in runs:
        lats = run.latencies or []
        ttft_ax.scatter(
            [lat.start for lat in lats],
            [lat.ttft * 1000 for lat in lats],
            s=6,
            alpha=0.6,
            label=run.label,
        )
        times = [t for lat in lats for t in lat.start + lat.ttft + np.cumsum(lat.itls)]
        gaps = [gap * 1000 for lat in lats for gap in lat.itls]
        itl_ax.scatter(times, gaps, s=3, alpha=0.4, label=run.label)
    _decorate(ttft_ax, "TTFT by request start", "", "TTFT (ms)")
    _decorate(itl_ax, "ITL by chunk arrival", "time since run start (s)", "ITL (ms)")
    return fig


def _sweeps(runs: list[_Run]) -> dict[str, list[_Run]]:
    """Runs per target, sorted by level, for targets run at two levels or more."""
    by_target: dict[str, list[_Run]] = {}
    for run in runs:
        if run.level is not None:
            by_target.setdefault(run.target, []).append(run)
    return {
        target: sorted(group, key=lambda run: float(run.level or 0))
        for target, group in by_target.items()
        if len({format_level(run.level) for run in group}) > 1
    }


def _sweep_figure(sweeps: dict[str, list[_Run]]) -> Figure:
    levels = sorted({float(r.level or 0) for group in sweeps.values() for r in group})
    position = {level: i for i, level in enumerate(levels)}  # even spacing; "inf" fits
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    tput_ax, ttft_ax, tpot_ax = fig.subplots(1, 3)
    for i, (target, group) in enumerate(sweeps.items()):
        color = f"C{i % 10}"
        xs = [position[float(r.level or 0)] for r in group]
        tput_ax.plot(
            xs, [r.summary.output_throughput for r in group], "o-", color=color, label=target
        )
        for ax, field in ((ttft_ax, "ttft_ms"), (tpot_ax, "tpot_ms")):
            for stat, style in (("median", "o-"), ("p99", "s--")):
                ys = [_value(r.summary, field, stat) for r in group]
                ax.plot(xs, ys, style, color=color, label=f"{target} {stat}")
    titles = (("output tok/s", tput_ax), ("TTFT (ms)", ttft_ax), ("TPOT (ms)", tpot_ax))
    for title, ax in titles:
        ax.set_xticks(range(len(levels)), [format_level(level) for level in levels])
        _decorate(ax, f"{title} vs level", "level", title)
    return fig


def _targets_figure(runs: list[_Run]) -> Figure:
    targets = list(dict.fromkeys(run.target for run in runs))
    groups = list(dict.fromkeys(format_level(run.level) for run in runs))
    width = 0.8 / len(targets)
    fig = Figure(figsize=(15, 8), layout="constrained")
    for ax, (title, field, stat) in zip(fig.subplots(2, 3).flat, _BARS, strict=True):
        for j, target in enumerate(targets):
            cells = [(groups.index(format_level(r.level)), r) for r in runs if r.target == target]
            xs = [g + (j - (len(targets) - 1) / 2) * width for g, _ in cells]
            ys = [_value(r.summary, field, stat) for _, r in cells]
            ax.bar(xs, ys, width, label=target, color=f"C{j % 10}")
        ax.set_xticks(range(len(groups)), [f"level {g}" if g != "-" else "" for g in groups])
        _decorate(ax, title, "", title)
    return fig


def _value(summary: Summary, field: str, stat: str) -> float:
    value = summary_value(summary, field, stat)
    return math.nan if value is None else value


def _decorate(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to fig: renders with Agg, no pyplot involved
    fig.savefig(path, dpi=100)
    return path
