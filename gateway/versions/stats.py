"""The finish hook that measures every request an alias's version served, for the
rollout guard."""

from __future__ import annotations

import time

from gateway.core.context import RequestContext
from gateway.stores import VersionMeasurements


class VersionMeasure:
    """Counts each finished request of a version into the store's per-second windows
    (:class:`~gateway.stores.VersionMeasurements`), so that a guard on any replica
    judges the requests of all of them: a server error (5xx) or not, and its TTFT (the
    engine's first byte, from arrival) when one came."""

    def __init__(self, measurements: VersionMeasurements) -> None:
        self._measurements = measurements

    async def record(self, ctx: RequestContext) -> None:
        """The finish hook. Client disconnects (499) are not the version's doing."""
        if ctx.version is None or ctx.outcome.client_left:
            return
        first = ctx.timings.first_byte
        self._measurements.record(
            ctx.requested_model, ctx.version, at=time.time(),
            error=ctx.outcome.status.startswith("5"),
            ttft_s=None if first is None else first - ctx.timings.arrived)
