"""The routing comparison's numbers: working set, fleet prefix-cache hit rate, the table,
the targets and the plot. Pure functions over ``RunResult``s (the plot writes a PNG).

Hit rates are the engines' own: the increase of ``vllm:prefix_cache_hits_total`` over the
increase of ``vllm:prefix_cache_queries_total`` during the run, both summed over every
engine of the fleet (tokens found in the cache / prompt tokens looked up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from loadtests.metrics import (
    PREFIX_HITS,
    PREFIX_QUERIES,
    Summary,
    counter_increase,
    request_latency,
    series_by_name,
)
from loadtests.records import RunResult
from loadtests.workloads import MultiTurnWorkload

CHAT_MESSAGE_OVERHEAD = 4
"""Template tokens around each chat message in the simulator's count (``<|im_start|>``,
role, newline, ``<|im_end|>``)."""
CHAT_GENERATION_PROMPT = 3
"""Tokens that open the assistant's answer (``<|im_start|>``, ``assistant``, newline)."""
BASELINE = "single-unbounded"
"""The run name of one engine with an unbounded KV cache, hit directly."""
TTFT_SPEEDUP_TARGET = 3.0
HIT_RATE_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class WorkingSet:
    """Distinct prompt tokens a prefix cache must hold to miss nothing reusable."""

    system_tokens: int
    """The shared system message (once for the whole workload)."""
    conversation_tokens: int
    """One conversation's own prompt tokens at its last turn."""
    conversations: int

    @property
    def total_tokens(self) -> int:
        return self.system_tokens + self.conversations * self.conversation_tokens


def working_set(spec: MultiTurnWorkload) -> WorkingSet:
    """The working set of ``spec`` with the simulator's token counts (one token per word;
    chat adds ``CHAT_MESSAGE_OVERHEAD`` per message and the generation prompt). A real
    tokenizer and chat template differ by a few tokens per message."""
    later = spec.turns - 1
    if spec.endpoint == "completions":  # "<s>" and the words of every turn
        system = spec.system_len
        own = 1 + spec.first_len + later * (spec.output_len + spec.turn_len)
    else:
        overhead = CHAT_MESSAGE_OVERHEAD
        system = spec.system_len + overhead if spec.system_len else 0
        own = (spec.first_len + overhead + CHAT_GENERATION_PROMPT
               + later * (spec.output_len + spec.turn_len + 2 * overhead))
    return WorkingSet(system, own, spec.users)


def round_up(value: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return math.ceil(value / multiple) * multiple


@dataclass(frozen=True, slots=True)
class HitRate:
    hits: float
    queries: float

    @property
    def rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def fleet_hit_rate(result: RunResult, engines: Sequence[str]) -> HitRate | None:
    """The prefix-cache hit rate of ``engines`` (scraped base URLs) together over the run;
    None when some engine's counters were not scraped at least twice."""
    series = series_by_name(result)
    hits = queries = 0.0
    for engine in engines:
        hit = counter_increase(series.get((engine, PREFIX_HITS), []))
        query = counter_increase(series.get((engine, PREFIX_QUERIES), []))
        if hit is None or query is None:
            return None
        hits, queries = hits + hit, queries + query
    return HitRate(hits, queries)


@dataclass(frozen=True, slots=True)
class Row:
    """One run of the comparison, in the table's terms (latencies in ms)."""

    name: str
    engines: int
    completed: int
    failed: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p50_ms: float
    tpot_p50_ms: float
    output_throughput: float
    request_throughput: float
    hit_rate: float | None
    prefix_hits: float | None
    prefix_queries: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_row(name: str, engines: int, summary: Summary, hits: HitRate | None) -> Row:
    """The table row of one run."""
    return Row(
        name=name, engines=engines, completed=summary.completed, failed=summary.failed,
        ttft_p50_ms=summary.ttft_ms.percentiles["p50"],
        ttft_p90_ms=summary.ttft_ms.percentiles["p90"],
        itl_p50_ms=summary.itl_ms.percentiles["p50"],
        tpot_p50_ms=summary.tpot_ms.percentiles["p50"],
        output_throughput=summary.output_throughput,
        request_throughput=summary.request_throughput,
        hit_rate=None if hits is None else hits.rate,
        prefix_hits=None if hits is None else hits.hits,
        prefix_queries=None if hits is None else hits.queries,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    value: float | None
    goal: str
    met: bool | None
    """None when a run the target needs is missing."""


def check_targets(rows: Sequence[Row], *, speedup: float = TTFT_SPEEDUP_TARGET,
                  tolerance: float = HIT_RATE_TOLERANCE) -> list[TargetCheck]:
    """The product's two targets for the ``prefix`` strategy.

    * TTFT: round_robin's p50 / prefix's p50 >= ``speedup``;
    * hit rate: prefix's >= (1 - ``tolerance``) x the unbounded single engine's (relative).
    """
    by_name = {row.name: row for row in rows}
    prefix, rr, base = by_name.get("prefix"), by_name.get("round_robin"), by_name.get(BASELINE)
    ratio = None
    if prefix is not None and rr is not None and prefix.ttft_p50_ms > 0:
        ratio = rr.ttft_p50_ms / prefix.ttft_p50_ms
    share = None
    if prefix is not None and base is not None and prefix.hit_rate is not None and base.hit_rate:
        share = prefix.hit_rate / base.hit_rate
    return [
        TargetCheck("TTFT p50 round_robin / prefix", ratio, f">= {speedup:g}x",
                    None if ratio is None else ratio >= speedup),
        TargetCheck("hit rate prefix / single unbounded engine", share,
                    f">= {1 - tolerance:.0%}", None if share is None else share >= 1 - tolerance),
    ]


def markdown(rows: Sequence[Row], checks: Sequence[TargetCheck]) -> str:
    """The comparison table, then one line per target."""
    header = ["strategy", "engines", "OK / failed", "TTFT p50 (ms)", "TTFT p90 (ms)",
              "ITL p50 (ms)", "TPOT p50 (ms)", "out tok/s", "req/s", "prefix hit rate"]
    lines = [_cells(header), _cells(["---"] * len(header))]
    for r in rows:
        hit = "-" if r.hit_rate is None else f"{r.hit_rate:.1%}"
        lines.append(_cells([
            r.name, str(r.engines), f"{r.completed} / {r.failed}", f"{r.ttft_p50_ms:,.1f}",
            f"{r.ttft_p90_ms:,.1f}", f"{r.itl_p50_ms:.1f}", f"{r.tpot_p50_ms:.1f}",
            f"{r.output_throughput:,.0f}", f"{r.request_throughput:.2f}", hit]))
    lines += ["", "Targets:", ""]
    for check in checks:
        value = "-" if check.value is None else f"{check.value:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check.met]
        lines.append(f"- {check.name}: {value} (goal {check.goal}): **{verdict}**")
    return "\n".join([*lines, ""])


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_plot(runs: Sequence[tuple[Row, RunResult]], path: Path) -> Path:
    """TTFT CDF per run (log scale) beside prefix-cache hit-rate bars, as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(13, 5), layout="constrained")
    cdf_ax, bar_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for i, (row, result) in enumerate(runs):
        ttfts = np.sort([lat.ttft * 1000 for r in result.records
                         if (lat := request_latency(r)) is not None])
        if ttfts.size:
            cdf_ax.step(ttfts, np.arange(1, ttfts.size + 1) / ttfts.size, where="post",
                        color=f"C{i % 10}", label=f"{row.name} (p50 {row.ttft_p50_ms:,.0f} ms)")
    cdf_ax.set_xscale("log")
    cdf_ax.set(title="TTFT CDF", xlabel="TTFT (ms, log scale)", ylabel="fraction of requests")
    cdf_ax.grid(True, which="both", alpha=0.3)
    cdf_ax.legend(fontsize="small")
    names = [row.name for row, _ in runs]
    rates = [100 * (row.hit_rate or 0.0) for row, _ in runs]
    bars = bar_ax.bar(range(len(runs)), rates, color=[f"C{i % 10}" for i in range(len(runs))])
    bar_ax.bar_label(bars, fmt="%.1f%%", fontsize="small")
    bar_ax.set_xticks(range(len(runs)), names, rotation=20, ha="right")
    bar_ax.set(title="prefix-cache hit rate (engines' counters)", ylabel="% of prompt tokens",
               ylim=(0, 105))
    bar_ax.grid(True, axis="y", alpha=0.3)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
