"""Graceful drain: how a SIGTERM stops the gateway without failing a request.

The timeline (the server, :mod:`gateway.edge.server`, drives it from its signal handler):

1. :meth:`Drain.announce` (the signal, ``drain.delay_s`` before stopping): ``/ready``
   answers 503 so that load balancers and Kubernetes endpoints stop sending, while
   everything that still arrives (requests, WebSockets) is served as before.
2. :meth:`Drain.begin` (the delay is over; SIGINT comes here at once): the server stops
   accepting connections; a request that arrives on a connection still open gets a 503
   (``shutting_down``); requests already running go on. Each WebSocket session is told
   (:meth:`Drain.on_begin`) and closes (1001) once its requests in flight have ended.
3. ``drain.timeout_s`` after :meth:`Drain.begin`: the upstream streams still open are
   closed, so each of their clients gets an error event and ``[DONE]`` (an error message
   on a WebSocket) instead of a cut connection, and the realtime sessions still open are
   closed (1001).
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
        self.announced = False
        """``/ready`` answers 503 (step 1 on)."""
        self.draining = False
        """New requests are refused (step 2 on)."""
        self.expired = False
        self._metrics = metrics
        self._closers: dict[int, Callable[[], None]] = {}
        self._begin_hooks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None

    def announce(self) -> None:
        """Step 1: not ready any more, still serving."""
        if self.announced:
            return
        self.announced = True
        self._metrics.draining.set(1)
        log.info("not ready: /ready answers 503; still serving until the drain begins")

    def begin(self) -> None:
        """Step 2: refuse new requests, let those running finish until the deadline."""
        self.announce()
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d upstream streams open, deadline %.0f s",
                 len(self._closers), self.timeout_s)
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)
        for hook in list(self._begin_hooks.values()):
            hook()

    def register(self, close: Callable[[], None]) -> int:
        """Track an open upstream stream or session; ``close`` ends it at the deadline."""
        if self.expired:
            close()
        self._next += 1
        self._closers[self._next] = close
        return self._next

    def unregister(self, token: int) -> None:
        self._closers.pop(token, None)
        self._begin_hooks.pop(token, None)

    def on_begin(self, hook: Callable[[], None]) -> int:
        """Call ``hook`` when the drain begins (at once if it has); ``unregister`` the
        token it returns when its session ends."""
        self._next += 1
        self._begin_hooks[self._next] = hook
        if self.draining:
            hook()
        return self._next

    def _expire(self) -> None:
        self.expired = True
        if self._closers:
            log.warning("drain deadline: closing %d upstream streams and sessions",
                        len(self._closers))
        for close in list(self._closers.values()):
            close()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
