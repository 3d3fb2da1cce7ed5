"""An engine's load as its ``/metrics`` page states it, read fast.

The router reads every engine's metrics several times a second, so this does not parse
the whole exposition (vLLM's page has hundreds of samples): it scans for the five
series it needs and sums each over its labels (one engine may serve several models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_SERIES: dict[bytes, str] = {
    b"vllm:num_requests_running": "running",
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:kv_cache_usage_perc": "kv_usage",
    b"vllm:prefix_cache_queries_total": "prefix_queries",
    b"vllm:prefix_cache_hits_total": "prefix_hits",
}


@dataclass(frozen=True)
class EngineLoad:
    """One scrape. ``kv_usage`` is a fraction (1.0 = full); the prefix counters count
    prompt tokens since the engine started."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0

    @property
    def queued(self) -> float:
        return self.running + self.waiting


def parse_load(raw: bytes) -> EngineLoad:
    """The load series of a Prometheus text page; absent series read as 0."""
    totals: dict[str, float] = {}
    for line in raw.split(b"\n"):
        if not line.startswith(b"vllm:"):
            continue
        end = len(line)
        for stop in (b"{", b" "):
            at = line.find(stop)
            if 0 <= at < end:
                end = at
        field = _SERIES.get(line[:end])
        if field is None:
            continue
        try:
            rest = line[line.rindex(b"}") + 1:] if b"}" in line else line[end:]
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        if math.isfinite(value):
            totals[field] = totals.get(field, 0.0) + value
    return EngineLoad(**totals)
