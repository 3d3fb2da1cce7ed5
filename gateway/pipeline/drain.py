"""Graceful drain: on SIGTERM stop taking requests, let in-flight streams finish.

``begin()`` is called from the server's signal handler (see :mod:`gateway.edge.server`).
From then on ``/ready`` answers 503 and new generation requests get 503; requests
already running go on. After ``timeout_s`` the upstream streams still open are closed,
so each of their clients gets an error event and ``[DONE]`` instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.observability.metrics import GatewayMetrics

log = logging.getLogger("sluice.drain")


class Drain:
    def __init__(self, timeout_s: float, metrics: GatewayMetrics) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self.expired = False
        self._metrics = metrics
        self._closers: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        self._metrics.draining.set(1)
        log.info("draining: %d upstream streams open, deadline %.0f s",
                 len(self._closers), self.timeout_s)
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def register(self, close: Callable[[], None]) -> int:
        """Track an open upstream stream; ``close`` ends it at the deadline."""
        if self.expired:
            close()
        self._next += 1
        self._closers[self._next] = close
        return self._next

    def unregister(self, token: int) -> None:
        self._closers.pop(token, None)

    def _expire(self) -> None:
        self.expired = True
        if self._closers:
            log.warning("drain deadline: closing %d upstream streams", len(self._closers))
        for close in list(self._closers.values()):
            close()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
