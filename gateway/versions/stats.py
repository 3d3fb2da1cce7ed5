"""Per-version request counts and latency sums of this replica, for rollout guards.

A finish hook counts every request an alias's version served; a guard takes a snapshot
when a step starts and reads the difference since. Totals only (no windows kept): two
integers and a float per version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.pipeline.context import RequestContext
from gateway.stores import VersionMeasurements


@dataclass(frozen=True, slots=True)
class Tally:
    """Requests, server errors (5xx) and the sum of their latencies."""

    requests: int = 0
    errors: int = 0
    latency_s: float = 0.0

    def __sub__(self, other: Tally) -> Tally:
        return Tally(self.requests - other.requests, self.errors - other.errors,
                     self.latency_s - other.latency_s)

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.requests + other.requests, self.errors + other.errors,
                     self.latency_s + other.latency_s)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.requests if self.requests else 0.0

    def public(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4),
                "mean_latency_s": round(self.mean_latency_s, 4)}


class VersionStats:
    """Running tallies per (alias, version)."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], Tally] = {}

    async def record(self, ctx: RequestContext) -> None:
        """The finish hook. Client disconnects (499) are not the version's doing."""
        if ctx.version is None or ctx.outcome.client_left:
            return
        end = ctx.timings.finished if ctx.timings.finished is not None else ctx.timings.arrived
        key = (ctx.requested_model, ctx.version)
        error = int(ctx.outcome.status.startswith("5"))
        self._tallies[key] = self.get(*key) + Tally(1, error, end - ctx.timings.arrived)

    def get(self, alias: str, version: str) -> Tally:
        return self._tallies.get((alias, version), Tally())


class VersionMeasure:
    """The finish hook that counts each finished request of a version into the store's
    per-second windows (:class:`~gateway.stores.VersionMeasurements`), so that a guard
    on any replica judges the requests of all of them: a server error (5xx) or not, and
    its TTFT (the engine's first byte, from arrival) when one came."""

    def __init__(self, measurements: VersionMeasurements) -> None:
        self._measurements = measurements

    async def record(self, ctx: RequestContext) -> None:
        """Client disconnects (499) are not the version's doing."""
        if ctx.version is None or ctx.outcome.client_left:
            return
        first = ctx.timings.first_byte
        self._measurements.record(
            ctx.requested_model, ctx.version, at=time.time(),
            error=ctx.outcome.status.startswith("5"),
            ttft_s=None if first is None else first - ctx.timings.arrived)
