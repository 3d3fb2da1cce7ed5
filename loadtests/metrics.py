"""Benchmark metrics, computed the way ``vllm bench serve`` computes them.

Pure functions over :class:`~loadtests.records.RunResult`; no I/O. The definitions follow
``calculate_metrics`` in ``vllm/benchmarks/serve.py`` and the request functions in
``vllm/benchmarks/lib/endpoint_request_func.py``, so numbers are comparable:

* Only successful requests count. A request succeeds when it has no error, it ended, and
  at least one output chunk arrived (vLLM fails a stream without a chunk: "Never received
  a valid chunk to calculate TTFT"). Failures are counted by type in ``errors_by_type``;
  the two types this module adds are ``no_output`` and ``incomplete`` (no error, no end).
* TTFT = first output chunk - start.
* E2EL = last output chunk - start. Like vLLM, the trailing usage chunk and ``[DONE]`` do
  not move the end of a request, so this is not ``RequestRecord.e2el`` (``end - start``).
* TPOT = (E2EL - TTFT) / (completion_tokens - 1), for requests with more than one token.
* ITL = every gap between consecutive output chunks of a request, all requests pooled.
* Throughputs divide by ``RunResult.duration_s``; tokens are the server's ``usage`` of
  successful requests only. A run of zero duration has zero throughputs.
* Statistics use numpy: ``np.mean``, ``np.median``, ``np.std`` (ddof=0) and
  ``np.percentile`` (linear interpolation), in milliseconds. An empty sample gives all
  zeros, as vLLM does (it computes over ``[0]``).
* Goodput = successful requests meeting every SLO given (``<=``), per second. A request
  with a single token has no TPOT and passes a TPOT SLO (vLLM counts its TPOT as 0).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from loadtests.records import RequestRecord, RunResult

DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
NO_OUTPUT = "no_output"
"""Error type of a request that ended without error but streamed no output chunk."""
INCOMPLETE = "incomplete"
"""Error type of a request with neither an error nor an end."""
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"

Series = list[tuple[float, float]]
"""``(t, value)`` points in time order."""


class Slo(BaseModel):
    """Service-level objectives for goodput, in milliseconds; None means no objective."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    tpot_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    e2el_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @classmethod
    def parse(cls, spec: str | Sequence[str]) -> Slo:
        """Parse vLLM's ``--goodput`` syntax: ``"ttft:500 tpot:50 e2el:3000"``.

        ``spec`` is one string or a list of them (as argparse gives ``nargs="+"``). Keys
        are ``ttft``, ``tpot`` and ``e2el``, each at most once; values are non-negative
        milliseconds. Raises ValueError on anything else.
        """
        tokens = spec.split() if isinstance(spec, str) else [t for s in spec for t in s.split()]
        if not tokens:
            raise ValueError("empty SLO spec: expected KEY:VALUE pairs such as 'ttft:500'")
        values: dict[str, float] = {}
        for token in tokens:
            key, sep, raw = token.partition(":")
            if not sep or key not in ("ttft", "tpot", "e2el"):
                raise ValueError(
                    f"bad SLO {token!r}: expected KEY:VALUE with KEY one of ttft, tpot, e2el"
                )
            if f"{key}_ms" in values:
                raise ValueError(f"SLO {key!r} given twice")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"bad SLO {token!r}: {raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"bad SLO {token!r}: milliseconds must be finite and >= 0")
            values[f"{key}_ms"] = value
        return cls.model_validate(values)

    def spec(self) -> str:
        """The objectives in ``parse`` syntax, e.g. ``"ttft:500 tpot:50"``."""
        pairs = (("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2el", self.e2el_ms))
        return " ".join(f"{key}:{value:g}" for key, value in pairs if value is not None)

    def is_met(self, latency: RequestLatency) -> bool:
        """Whether one successful request meets every objective."""
        checks = (
            (self.ttft_ms, latency.ttft),
            (self.tpot_ms, latency.tpot or 0.0),
            (self.e2el_ms, latency.e2el),
        )
        return all(slo is None or seconds * 1000 <= slo for slo, seconds in checks)


class RequestLatency(NamedTuple):
    """The latencies of one successful request, in seconds."""

    start: float
    ttft: float
    e2el: float
    tpot: float | None
    """None when the request produced at most one token."""
    itls: list[float]


class Distribution(BaseModel):
    """Statistics of one latency sample, in milliseconds (all zeros when empty)."""

    model_config = ConfigDict(frozen=True)

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    """Keyed ``"p50"``, ``"p99"``, ``"p99.9"``, ..."""

    @classmethod
    def of(cls, values_ms: Sequence[float], percentiles: Sequence[float]) -> Distribution:
        """Describe ``values_ms`` with numpy, as vLLM does; empty gives all zeros."""
        data = np.asarray(values_ms if len(values_ms) else [0.0], dtype=np.float64)
        return cls(
            mean=float(np.mean(data)),
            median=float(np.median(data)),
            std=float(np.std(data)),
            min=float(np.min(data)),
            max=float(np.max(data)),
            percentiles={percentile_key(p): float(np.percentile(data, p)) for p in percentiles},
        )


class Summary(BaseModel):
    """The headline numbers of one run (see the module docstring for definitions)."""

    model_config = ConfigDict(frozen=True)

    completed: int
    failed: int
    errors_by_type: dict[str, int]
    duration_s: float
    request_throughput: float
    """Successful requests per second."""
    output_throughput: float
    """Completion tokens of successful requests per second."""
    total_token_throughput: float
    """Prompt plus completion tokens of successful requests per second."""
    total_input_tokens: int
    total_output_tokens: int
    goodput: float | None
    """Requests per second meeting every SLO; None when no SLO was given."""
    slo: Slo | None
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution


def percentile_key(p: float) -> str:
    """The key of percentile ``p`` in ``Distribution.percentiles``: 99 -> ``"p99"``."""
    return f"p{p:g}"


def failure_type(record: RequestRecord) -> str | None:
    """Why a request counts as failed, or None when it succeeded."""
    if record.error is not None:
        return record.error
    if record.end is None:
        return INCOMPLETE
    if not record.chunk_times:
        return NO_OUTPUT
    return None


def request_latency(record: RequestRecord) -> RequestLatency | None:
    """The latencies of a successful request; None for a failed one."""
    return None if failure_type(record) is not None else _latency(record)


def _latency(record: RequestRecord) -> RequestLatency:
    chunks = record.chunk_times
    ttft = chunks[0] - record.start
    e2el = chunks[-1] - record.start
    n = record.completion_tokens
    tpot = (e2el - ttft) / (n - 1) if n > 1 else None
    return RequestLatency(record.start, ttft, e2el, tpot, [b - a for a, b in pairwise(chunks)])


def summarize(
    result: RunResult,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: Slo | None = None,
) -> Summary:
    """Compute the summary of one run, as ``vllm bench serve`` would."""
    bad = [p for p in percentiles if not 0 <= p <= 100]
    if bad:
        raise ValueError(f"percentiles must be within [0, 100], got {bad}")
    errors: Counter[str] = Counter()
    latencies: list[RequestLatency] = []
    input_tokens = output_tokens = 0
    for record in result.records:
        kind = failure_type(record)
        if kind is not None:
            errors[kind] += 1
            continue
        latencies.append(_latency(record))
        input_tokens += record.prompt_tokens
        output_tokens += record.completion_tokens

    duration = result.duration_s

    def per_s(count: float) -> float:
        return count / duration if duration > 0 else 0.0

    def dist(values: list[float]) -> Distribution:
        return Distribution.of([v * 1000 for v in values], percentiles)

    good = None if slos is None else sum(slos.is_met(lat) for lat in latencies)
    return Summary(
        completed=len(latencies),
        failed=len(result.records) - len(latencies),
        errors_by_type=dict(sorted(errors.items())),
        duration_s=duration,
        request_throughput=per_s(len(latencies)),
        output_throughput=per_s(output_tokens),
        total_token_throughput=per_s(input_tokens + output_tokens),
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        goodput=None if good is None else per_s(good),
        slo=slos,
        ttft_ms=dist([lat.ttft for lat in latencies]),
        tpot_ms=dist([lat.tpot for lat in latencies if lat.tpot is not None]),
        itl_ms=dist([gap for lat in latencies for gap in lat.itls]),
        e2el_ms=dist([lat.e2el for lat in latencies]),
    )


def series_by_name(result: RunResult) -> dict[tuple[str, str], Series]:
    """Scraped samples grouped by ``(source, name)``, each series in time order."""
    grouped: dict[tuple[str, str], Series] = {}
    for sample in sorted(result.series, key=lambda s: s.t):
        grouped.setdefault((sample.source, sample.name), []).append((sample.t, sample.value))
    return grouped


def counter_increase(points: Series) -> float | None:
    """How much a Prometheus counter grew over ``points``; None with fewer than 2 points.

    A drop is a counter reset (an engine restart): the new value counts as growth since
    the reset, as Prometheus's ``increase()`` does.
    """
    if len(points) < 2:
        return None
    return sum(b - a if b >= a else b for (_, a), (_, b) in pairwise(points))


def counter_rate(points: Series) -> Series:
    """Per-second rate of a counter between consecutive points, at each interval's end."""
    return [
        (t1, ((v1 - v0 if v1 >= v0 else v1) / (t1 - t0)))
        for (t0, v0), (t1, v1) in pairwise(points)
        if t1 > t0
    ]


def prefix_hit_rate(
    result: RunResult,
    source: str,
    *,
    hits: str = PREFIX_HITS,
    queries: str = PREFIX_QUERIES,
) -> float | None:
    """Prefix-cache hit rate of ``source`` over the run: Δhits / Δqueries.

    None when either counter has fewer than two samples or no query was made.
    """
    series = series_by_name(result)
    hit_growth = counter_increase(series.get((source, hits), []))
    query_growth = counter_increase(series.get((source, queries), []))
    if hit_growth is None or not query_growth:
        return None
    return hit_growth / query_growth
