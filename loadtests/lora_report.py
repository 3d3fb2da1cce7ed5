"""The LoRA placement comparison's numbers: adapter popularity, the counters read from
the gateway and the engines, the table, the checks and the plot. Pure functions (the plot
writes a PNG).

Loads are counted twice, by the gateway (``sluice_adapter_loads_total``) and by the
simulated engines (``GET /sim/lora``); each is the increase over the measured run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from loadtests.metrics import Summary, request_latency
from loadtests.records import RunResult
from loadtests.scrape import samples


def zipf_weights(count: int, s: float) -> list[float]:
    """Zipf popularity of ``count`` items: the k-th (from 1) has weight 1/k^s, summing to 1."""
    if count < 1:
        raise ValueError("count must be at least 1")
    raw = [1.0 / k**s for k in range(1, count + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def adapter_names(count: int) -> list[str]:
    """``lora-00``, ``lora-01``, ...: most popular first."""
    return [f"lora-{i:02d}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class Counts:
    """Adapter counters at one moment: the gateway's and the engines' summed."""

    loads: float = 0.0
    """Gateway: loads that succeeded."""
    failed_loads: float = 0.0
    unloads: float = 0.0
    load_seconds_sum: float = 0.0
    """Gateway: time the engines took to load (the load calls alone, no wait for a slot)."""
    load_seconds_count: float = 0.0
    sim_loads: int = 0
    sim_unloads: int = 0
    already_loaded: int = 0
    """Engines: loads of an adapter they held (a gateway should never ask one)."""
    unloaded_busy: int = 0
    """Engines: unloads of an adapter with requests on it (never either)."""

    def __sub__(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) - getattr(other, name)
                         for name in self.__dataclass_fields__})


def gateway_counts(page: str) -> dict[str, float]:
    """The gateway's adapter counters from its ``/metrics`` page, summed over engines."""
    out = dict.fromkeys(("loads", "failed_loads", "unloads", "load_seconds_sum",
                         "load_seconds_count"), 0.0)
    for sample in samples(page):
        if sample.name == "sluice_adapter_loads_total":
            key = "loads" if sample.labels.get("outcome") == "loaded" else "failed_loads"
            out[key] += sample.value
        elif sample.name == "sluice_adapter_unloads_total":
            out["unloads"] += sample.value
        elif sample.name == "sluice_adapter_load_seconds_sum":
            out["load_seconds_sum"] += sample.value
        elif sample.name == "sluice_adapter_load_seconds_count":
            out["load_seconds_count"] += sample.value
    return out


def counts(gateway_page: str, sims: Sequence[Mapping[str, Any]]) -> Counts:
    """``Counts`` from the gateway's page and each engine's ``/sim/lora`` answer."""
    def total(key: str) -> int:
        return sum(int(sim.get(key, 0)) for sim in sims)

    return Counts(**gateway_counts(gateway_page), sim_loads=total("loads"),
                  sim_unloads=total("unloads"), already_loaded=total("already_loaded"),
                  unloaded_busy=total("unloaded_busy"))


@dataclass(frozen=True, slots=True)
class Row:
    """One policy's run, in the table's terms (latencies in ms)."""

    policy: str
    requests: int
    completed: int
    failed: int
    loads: int
    """Gateway's count over the measured run."""
    sim_loads: int
    failed_loads: int
    unloads: int
    sim_unloads: int
    already_loaded: int
    """Engines' count over the whole run, warm-up included."""
    unloaded_busy: int
    """The same."""
    mean_load_ms: float | None
    """Gateway: mean time of one engine load call (waits for a slot not included)."""
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2el_p50_ms: float
    request_throughput: float

    @property
    def loads_per_1k(self) -> float:
        return 1000 * self.loads / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loads_per_1k": self.loads_per_1k}


def make_row(policy: str, summary: Summary, during: Counts, lifetime: Counts) -> Row:
    """The table row of one policy: ``during`` the measured run, ``lifetime`` of the
    engines (for the never-allowed calls)."""
    return Row(
        policy=policy, requests=summary.completed + summary.failed,
        completed=summary.completed, failed=summary.failed, loads=round(during.loads),
        sim_loads=during.sim_loads, failed_loads=round(during.failed_loads),
        unloads=round(during.unloads), sim_unloads=during.sim_unloads,
        already_loaded=lifetime.already_loaded, unloaded_busy=lifetime.unloaded_busy,
        mean_load_ms=(1000 * during.load_seconds_sum / during.load_seconds_count
                      if during.load_seconds_count else None),
        ttft_p50_ms=summary.ttft_ms.percentiles["p50"],
        ttft_p99_ms=summary.ttft_ms.percentiles["p99"],
        e2el_p50_ms=summary.e2el_ms.percentiles["p50"],
        request_throughput=summary.request_throughput,
    )  # fmt: skip


def problems(row: Row) -> list[str]:
    """What must not happen: failed requests or loads, a load of an adapter the engine
    held, an unload of a busy one, the gateway's and the engines' counts apart."""
    found = []
    if row.failed:
        found.append(f"{row.policy}: {row.failed} requests failed")
    if row.failed_loads:
        found.append(f"{row.policy}: {row.failed_loads} adapter loads failed")
    if row.already_loaded:
        found.append(f"{row.policy}: {row.already_loaded} loads of an adapter already held")
    if row.unloaded_busy:
        found.append(f"{row.policy}: {row.unloaded_busy} unloads of an adapter in use")
    if (row.loads, row.unloads) != (row.sim_loads, row.sim_unloads):
        found.append(f"{row.policy}: the gateway counted {row.loads} loads and {row.unloads} "
                     f"unloads, the engines {row.sim_loads} and {row.sim_unloads}")
    return found


def markdown(rows: Sequence[Row]) -> str:
    """The comparison table."""
    header = ["placement", "requests (failed)", "adapter loads / 1,000 requests",
              "loads", "unloads", "mean load (ms)", "TTFT p50 (ms)", "TTFT p99 (ms)",
              "E2E p50 (ms)"]
    lines = [_cells(header), _cells(["---"] * len(header))]
    for r in rows:
        mean = "-" if r.mean_load_ms is None else f"{r.mean_load_ms:,.0f}"
        lines.append(_cells([
            r.policy, f"{r.requests:,} ({r.failed})", f"{r.loads_per_1k:.1f}", f"{r.loads:,}",
            f"{r.unloads:,}", mean, f"{r.ttft_p50_ms:,.1f}", f"{r.ttft_p99_ms:,.1f}",
            f"{r.e2el_p50_ms:,.0f}"]))
    return "\n".join([*lines, ""])


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_plot(runs: Sequence[tuple[Row, RunResult]], path: Path) -> Path:
    """Adapter loads per 1,000 requests per policy beside each policy's TTFT CDF (log
    scale), as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(13, 5), layout="constrained")
    bar_ax, cdf_ax = fig.subplots(1, 2, width_ratios=(2, 3))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    bars = bar_ax.bar(range(len(runs)), [row.loads_per_1k for row, _ in runs], color=colors)
    bar_ax.bar_label(bars, fmt="%.1f", fontsize="small")
    bar_ax.set_xticks(range(len(runs)), [row.policy for row, _ in runs])
    bar_ax.set(title="adapter loads per 1,000 requests", ylabel="loads / 1,000 requests")
    bar_ax.grid(True, axis="y", alpha=0.3)
    for color, (row, result) in zip(colors, runs, strict=True):
        ttfts = np.sort([lat.ttft * 1000 for r in result.records
                         if (lat := request_latency(r)) is not None])
        if ttfts.size:
            cdf_ax.step(ttfts, np.arange(1, ttfts.size + 1) / ttfts.size, where="post",
                        color=color, label=f"{row.policy} (p50 {row.ttft_p50_ms:,.0f} ms, "
                                           f"p99 {row.ttft_p99_ms:,.0f} ms)")
    cdf_ax.set_xscale("log")
    cdf_ax.set(title="TTFT CDF", xlabel="TTFT (ms, log scale)", ylabel="fraction of requests")
    cdf_ax.grid(True, which="both", alpha=0.3)
    cdf_ax.legend(fontsize="small", loc="lower right")
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
