"""Per-version measurements over time windows: requests, server errors and a TTFT
histogram, kept per whole second so that any window ``[since, until)`` is a sum.

The histogram has fixed buckets, the same in every replica, so that replicas' counts
add: bucket 0 is TTFT below 1 ms, bucket ``i`` (1 to ``len(TTFT_BOUNDS) - 1``) is
``[TTFT_BOUNDS[i - 1], TTFT_BOUNDS[i])``, and the last bucket is everything from the
last bound up. The bounds grow by 2^(1/5) (five buckets per doubling, 1 ms to about
131 s), so a quantile read from the histogram is within 15 % of the true one.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TTFT_BOUNDS: tuple[float, ...] = tuple(0.001 * 2 ** (i / 5) for i in range(86))
BUCKETS = len(TTFT_BOUNDS) + 1


def bucket_of(ttft_s: float) -> int:
    """The histogram bucket a TTFT falls in."""
    return bisect.bisect_right(TTFT_BOUNDS, ttft_s)


@dataclass(slots=True)
class Counts:
    """One second's (or one window's) figures of one version: ``ttft`` maps a bucket
    to its count (only buckets with some)."""

    requests: int = 0
    errors: int = 0
    ttft: dict[int, int] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for bucket, count in other.ttft.items():
            self.ttft[bucket] = self.ttft.get(bucket, 0) + count

    def count(self, error: bool, ttft_s: float | None) -> None:
        self.requests += 1
        self.errors += int(error)
        if ttft_s is not None:
            bucket = bucket_of(ttft_s)
            self.ttft[bucket] = self.ttft.get(bucket, 0) + 1


@dataclass(frozen=True, slots=True)
class Window:
    """A version's figures over a window, as the rollout guard reads them."""

    requests: int = 0
    errors: int = 0
    ttft: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, counts: Iterable[Counts]) -> Window:
        total = Counts()
        for one in counts:
            total.add(one)
        return cls(total.requests, total.errors, dict(total.ttft))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttft_samples(self) -> int:
        return sum(self.ttft.values())

    def ttft_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of TTFT (None without samples): the bucket holding the
        sample of rank ``ceil(q * n)``, interpolated linearly within it."""
        n = self.ttft_samples
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for bucket in sorted(self.ttft):
            count = self.ttft[bucket]
            if seen + count >= rank:
                low = TTFT_BOUNDS[bucket - 1] if bucket > 0 else 0.0
                if bucket >= len(TTFT_BOUNDS):
                    return low  # past the last bound: its lower edge
                high = TTFT_BOUNDS[bucket]
                return low + (high - low) * (rank - seen) / count
            seen += count
        raise AssertionError("unreachable: the ranks sum to n")

    @property
    def ttft_p50_s(self) -> float | None:
        return self.ttft_quantile(0.5)

    @property
    def ttft_p99_s(self) -> float | None:
        return self.ttft_quantile(0.99)

    def public(self) -> dict[str, float | int | None]:
        """The figures a rollout decision records."""
        p50, p99 = self.ttft_p50_s, self.ttft_p99_s
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4),
                "ttft_p50_s": None if p50 is None else round(p50, 4),
                "ttft_p99_s": None if p99 is None else round(p99, 4)}


class Seconds:
    """Counts per (alias, version, whole second), pruned to the last ``retention_s``
    seconds: what a memory backend keeps, and what a shared one keeps of its own."""

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self._counts: dict[tuple[str, str], dict[int, Counts]] = {}
        self._newest = 0

    def count(self, alias: str, version: str, at: float, error: bool,
              ttft_s: float | None) -> int:
        """Count one request that ended at ``at`` (epoch seconds); its second."""
        second = math.floor(at)
        seconds = self._counts.setdefault((alias, version), {})
        seconds.setdefault(second, Counts()).count(error, ttft_s)
        if second > self._newest:
            self._newest = second
            self.prune(second)
        return second

    def prune(self, now: int) -> None:
        """Forget the seconds before ``now - retention_s``."""
        oldest = now - math.ceil(self.retention_s)
        for key, seconds in list(self._counts.items()):
            # Seconds are added in time order (but for a late one): the old ones first.
            for second in list(itertools.takewhile(lambda s: s < oldest, seconds)):
                del seconds[second]
            if not seconds:
                del self._counts[key]

    def window(self, alias: str, version: str, since: int, until: int) -> Window:
        seconds = self._counts.get((alias, version), {})
        return Window.of(c for s, c in seconds.items() if since <= s < until)
