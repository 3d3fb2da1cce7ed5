"""The finish hook that measures the requests an alias's version served, for the rollout
guard, and which of them it may judge the version by.

Only requests the alias's split sent there count, and only generations (chat,
completions, responses): a request pinned with ``x-sluice-version`` chose its version,
and a cheap call (``/tokenize``, embeddings) says little of how the version generates,
so neither can steer a rollout either way. Nor can one caller's volume: of the requests
counted for a version, no one caller (its API key's principal, else its address) makes
more than ``max_caller_share`` (:class:`CallerShare`); the rest are served, not
counted. Each skip is counted in ``sluice_version_samples_skipped_total`` by reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.context import RequestContext
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import VersionMeasurements

HALF_LIFE_S = 60.0
"""How fast a caller's past requests stop counting toward its share."""
MAX_CALLERS = 10_000
"""Callers remembered per version (the oldest-seen are forgotten first)."""


@dataclass(slots=True)
class _Tally:
    """Decayed request counts of one version: in all, and per caller (count, as of)."""

    total: float = 0.0
    at: float = 0.0
    callers: dict[str, tuple[float, float]] = field(default_factory=dict)
    swept: float = 0.0


class CallerShare:
    """Which requests of a version count, so that no caller exceeds ``max_share`` of
    those counted: a request counts when its caller's count so far is below
    ``max(max_share, 1 / n)`` of the total with it (``n`` the callers seen lately, so
    that with fewer than ``1 / max_share`` callers each may have an equal part, and a
    lone caller all of it). Counts decay with a half-life of ``half_life_s``, so the
    share is over recent requests. Per replica: every replica holds each caller to the
    share, so the sum over replicas holds it too."""

    def __init__(self, max_share: float, *, half_life_s: float = HALF_LIFE_S,
                 max_callers: int = MAX_CALLERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_share = max_share
        self._half_life_s = half_life_s
        self._max_callers = max_callers
        self._clock = clock
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def _decay(self, age_s: float) -> float:
        return float(0.5 ** (age_s / self._half_life_s))

    def admit(self, alias: str, version: str, caller: str) -> bool:
        """Whether this request of ``caller`` counts (it is counted when it does)."""
        now = self._clock()
        tally = self._tallies.get((alias, version))
        if tally is None:
            tally = self._tallies[(alias, version)] = _Tally(at=now, swept=now)
        if now - tally.swept > self._half_life_s:
            self._sweep(tally, now)
        total = tally.total * self._decay(now - tally.at)
        count, at = tally.callers.get(caller, (0.0, now))
        count *= self._decay(now - at)
        callers = len(tally.callers) + (caller not in tally.callers)
        share = max(self._max_share, 1.0 / callers)
        counts = count < share * (total + 1.0)
        tally.total, tally.at = total + counts, now
        tally.callers.pop(caller, None)  # re-inserted last: the newest-seen
        tally.callers[caller] = (count + counts, now)
        while len(tally.callers) > self._max_callers:
            del tally.callers[next(iter(tally.callers))]
        return counts

    def _sweep(self, tally: _Tally, now: float) -> None:
        """Forget callers whose count has decayed below a tenth of a request."""
        tally.callers = {caller: (count, at) for caller, (count, at) in tally.callers.items()
                         if count * self._decay(now - at) >= 0.1}
        tally.swept = now


class VersionMeasure:
    """Counts the finished requests the guard may judge a version by (see the module
    doc) into the store's per-second windows (:class:`~gateway.stores.VersionMeasurements`),
    so that a guard on any replica judges the requests of all of them: a server error
    (5xx) or not, and its TTFT (the engine's first byte, from arrival) when one came."""

    def __init__(self, measurements: VersionMeasurements, metrics: GatewayMetrics, *,
                 max_caller_share: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._measurements = measurements
        self._metrics = metrics
        self._share = CallerShare(max_caller_share, clock=clock)

    def _skip(self, ctx: RequestContext) -> str | None:
        """Why the request is not counted; None when it is."""
        if ctx.pinned_version is not None:
            return "pinned"
        if not ctx.endpoint.generates:
            return "endpoint"
        assert ctx.version is not None
        if not self._share.admit(ctx.requested_model, ctx.version, ctx.caller):
            return "caller_share"
        return None

    async def record(self, ctx: RequestContext) -> None:
        """The finish hook. Client disconnects (499) are not the version's doing."""
        if ctx.version is None or ctx.outcome.client_left:
            return
        skipped = self._skip(ctx)
        if skipped is not None:
            self._metrics.version_samples_skipped.labels(ctx.requested_model, skipped).inc()
            return
        first = ctx.timings.first_byte
        self._measurements.record(
            ctx.requested_model, ctx.version, at=time.time(),
            error=ctx.outcome.status.startswith("5"),
            ttft_s=None if first is None else first - ctx.timings.arrived)
