"""Per-engine circuit breaker: stop sending requests to an engine that keeps failing.

A breaker is CLOSED while the engine behaves. ``failure_threshold`` consecutive failures
OPEN it: the router skips the engine for ``open_s`` seconds, which gives a crashed or
overloaded engine room to recover instead of a steady stream of doomed requests. After
that it is HALF_OPEN: exactly one request (the probe) is let through; its success closes
the breaker, its failure opens it for another ``open_s``.

The OPEN -> HALF_OPEN step is computed from the clock when asked, so no timer task is
needed and a fake clock makes every transition exactly testable.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe.

    The router calls :meth:`available` to filter candidates, :meth:`on_pick` for the
    engine it chose, and then exactly one of :meth:`record_success`,
    :meth:`record_failure` or :meth:`release` when that request ends.
    """

    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "failure_threshold", "open_s")

    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if open_s <= 0:
            raise ValueError("open_s must be > 0")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns HALF_OPEN once ``open_s`` has passed."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def opened_at(self) -> float | None:
        """The clock reading when the breaker last opened; None while closed."""
        return self._opened_at

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (keeps counting while open, for metrics)."""
        return self._failures

    def available(self) -> bool:
        """May a request be routed to this engine now?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return not self._probing

    def on_pick(self) -> None:
        """The router chose this engine; in HALF_OPEN that request becomes the probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def record_success(self) -> None:
        """The engine answered: close, whatever the state was."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        """The engine failed a request.

        While OPEN the open period is not extended: requests picked before the breaker
        opened may still be failing, and they say nothing new about the engine.
        """
        self._failures += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._open()

    def release(self) -> None:
        """The probe ended with no verdict (e.g. the client left): let another one try."""
        self._probing = False

    def force_open(self) -> None:
        """Open now, restarting the open period (the engine is known to be down)."""
        self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probing = False
