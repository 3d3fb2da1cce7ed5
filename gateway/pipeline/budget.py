"""Retry budget: retries may add at most a fixed fraction to the load on the fleet.

Per-request retry limits alone multiply load when the whole fleet is struggling (every
request retried twice is three times the traffic, sent exactly when engines are least
able to take it). A budget, as in Finagle and Envoy, bounds retries over a sliding window
to ``min_per_s * window_s + ratio * requests``: the floor keeps retries possible at low
traffic, the ratio caps them at high traffic.

Counts live in 1-second buckets, so memory is bounded by the window, not the traffic.
A bucket counts while it overlaps the last ``window_s`` seconds, so an event leaves the
window between ``window_s`` and ``window_s + 1`` seconds after it happened.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    second: int
    requests: int = 0
    retries: int = 0


class RetryBudget:
    """Sliding-window budget shared by all retries of one gateway."""

    __slots__ = ("_buckets", "_clock", "min_per_s", "ratio", "window_s")

    def __init__(
        self,
        ratio: float,
        min_per_s: float,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0:
            raise ValueError("ratio must be >= 0")
        if min_per_s < 0:
            raise ValueError("min_per_s must be >= 0")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._clock = clock
        self._buckets: deque[_Bucket] = deque(maxlen=math.ceil(window_s) + 1)

    @property
    def requests_in_window(self) -> int:
        """Original requests counted in the current window."""
        self._expire(self._clock())
        return sum(bucket.requests for bucket in self._buckets)

    @property
    def retries_in_window(self) -> int:
        """Retries spent in the current window."""
        self._expire(self._clock())
        return sum(bucket.retries for bucket in self._buckets)

    def record_request(self) -> None:
        """Count an original (not retried) request."""
        self._current().requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and nothing counted) when it is spent."""
        bucket = self._current()
        requests = sum(b.requests for b in self._buckets)
        retries = sum(b.retries for b in self._buckets)
        if retries >= self.min_per_s * self.window_s + self.ratio * requests:
            return False
        bucket.retries += 1
        return True

    def _current(self) -> _Bucket:
        """The bucket for now, after dropping the ones that left the window."""
        now = self._clock()
        self._expire(now)
        second = math.floor(now)
        buckets = self._buckets
        # A clock never goes back, but if one did, its events join the newest bucket.
        if buckets and buckets[-1].second >= second:
            return buckets[-1]
        bucket = _Bucket(second)
        buckets.append(bucket)
        return bucket

    def _expire(self, now: float) -> None:
        # Bucket s holds events of [s, s + 1); it counts while it overlaps (now - window, now].
        buckets = self._buckets
        while buckets and buckets[0].second + 1 <= now - self.window_s:
            buckets.popleft()
