"""Per-second measurement windows: the TTFT histogram's buckets, quantiles read from it,
and sums over ``[since, until)``."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.stores.memory import MemoryMeasurements
from gateway.stores.windows import TTFT_BOUNDS, Counts, Seconds, Window, bucket_of


def window(ttfts: list[float], errors: int = 0) -> Window:
    counts = Counts()
    for ttft in ttfts:
        counts.count(False, ttft)
    for _ in range(errors):
        counts.count(True, None)
    return Window.of([counts])


def exact(values: list[float], q: float) -> float:
    return sorted(values)[max(1, math.ceil(q * len(values))) - 1]


def test_buckets_are_half_open_and_bounded() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(0.000999) == 0
    assert bucket_of(0.001) == 1  # a bound opens its bucket
    assert bucket_of(TTFT_BOUNDS[10]) == 11
    assert bucket_of(TTFT_BOUNDS[10] * 0.999) == 10
    assert bucket_of(1e9) == len(TTFT_BOUNDS)  # the overflow bucket
    assert TTFT_BOUNDS[-1] > 120
    assert all(b / a < 1.15 for a, b in itertools.pairwise(TTFT_BOUNDS))


def test_quantiles_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.2), 0.8) for _ in range(5000)]
    measured = window(values)
    for q in (0.5, 0.9, 0.99):
        estimate = measured.ttft_quantile(q)
        assert estimate is not None
        assert abs(estimate / exact(values, q) - 1) < 0.15, q


def test_p99_is_the_tail_not_the_mean() -> None:
    assert window([0.1] * 99 + [1.0]).ttft_p99_s == pytest.approx(0.1, rel=0.15)
    assert window([0.1] * 98 + [1.0] * 2).ttft_p99_s == pytest.approx(1.0, rel=0.15)
    assert window([0.1] * 98 + [1.0] * 2).ttft_p50_s == pytest.approx(0.1, rel=0.15)
    assert window([500.0]).ttft_p99_s == TTFT_BOUNDS[-1]  # past the last bound
    # Nearest rank: of 150, the 149th (148.5 rounded up) is the first slow one.
    assert window([0.1] * 148 + [1.0] * 2).ttft_p99_s == pytest.approx(1.0, rel=0.15)


def test_errors_before_a_first_byte_count_without_a_ttft() -> None:
    measured = window([0.2] * 8, errors=2)
    assert (measured.requests, measured.errors, measured.ttft_samples) == (10, 2, 8)
    assert measured.error_rate == 0.2
    assert Window().ttft_p99_s is None
    assert Window().error_rate == 0.0
    assert window([], errors=3).public() == {
        "requests": 3, "errors": 3, "error_rate": 1.0, "ttft_p50_s": None,
        "ttft_p99_s": None}


def test_replicas_histograms_add_to_the_whole() -> None:
    rng = random.Random(3)
    a = [rng.uniform(0.05, 0.1) for _ in range(990)]
    b = [rng.uniform(1.0, 2.0) for _ in range(30)]  # one replica sees the slow tail
    whole = Window.of([Counts(len(a), 0, dict(window(a).ttft)),
                       Counts(len(b), 0, dict(window(b).ttft))])
    assert whole.requests == 1020
    assert whole.ttft == window(a + b).ttft
    p99 = whole.ttft_p99_s
    assert p99 is not None
    assert abs(p99 / exact(a + b, 0.99) - 1) < 0.15


def test_a_window_sums_the_seconds_from_since_up_to_until() -> None:
    seconds = Seconds(retention_s=3600)
    for at, ttft in ((99.9, 9.0), (100.0, 0.1), (100.5, 0.1), (101.2, 0.2), (102.0, 9.0)):
        seconds.count("chat", "v2", at, False, ttft)
    seconds.count("chat", "v2", 101.7, True, None)
    seconds.count("chat", "v1", 101.0, False, 0.1)
    inside = seconds.window("chat", "v2", 100, 102)
    assert (inside.requests, inside.errors, inside.ttft_samples) == (4, 1, 3)
    p99 = inside.ttft_p99_s
    assert p99 is not None
    assert p99 < 0.25  # neither 9 s request is inside
    assert seconds.window("chat", "v2", 102, 102).requests == 0
    assert seconds.window("chat", "v3", 0, 10**10).requests == 0


def test_seconds_past_the_retention_are_forgotten() -> None:
    seconds = Seconds(retention_s=60)
    seconds.count("chat", "v1", 1000.0, False, 0.1)
    seconds.count("chat", "v1", 1030.0, False, 0.1)
    assert seconds.window("chat", "v1", 0, 2000).requests == 2
    seconds.count("chat", "v2", 1065.0, False, 0.1)  # 1000 is now past 60 s
    assert seconds.window("chat", "v1", 0, 2000).requests == 1
    seconds.count("chat", "v2", 1200.0, False, 0.1)
    assert seconds.window("chat", "v1", 0, 2000).requests == 0


async def test_the_memory_backend_reads_windows() -> None:
    store = MemoryMeasurements(retention_s=600)
    store.record("chat", "v1", at=500.5, error=False, ttft_s=0.3)
    store.record("chat", "v1", at=501.5, error=True, ttft_s=None)
    assert (await store.window("chat", "v1", 500, 502)).public()["errors"] == 1
    assert (await store.window("chat", "v1", 501, 502)).requests == 1
