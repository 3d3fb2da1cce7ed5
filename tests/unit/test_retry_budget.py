"""The retry budget's arithmetic and its sliding window, driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.pipeline.budget import RetryBudget


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    """How many retries the budget grants before it refuses."""
    granted = 0
    while granted < limit and budget.try_spend():
        granted += 1
    return granted


def test_min_per_s_alone_allows_min_times_window() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=2.0, window_s=10.0, clock=FakeClock())
    assert spend_all(budget) == 20
    assert budget.retries_in_window == 20
    assert not budget.try_spend()
    assert budget.retries_in_window == 20  # a refused retry is not counted


def test_ratio_alone_scales_with_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0, clock=FakeClock())
    assert not budget.try_spend()  # no requests, no floor: nothing to spend
    for _ in range(50):
        budget.record_request()
    assert budget.requests_in_window == 50
    assert spend_all(budget) == 10  # 0.2 x 50
    for _ in range(5):
        budget.record_request()
    assert spend_all(budget) == 1  # 0.2 x 55 = 11


def test_floor_and_ratio_add_up() -> None:
    budget = RetryBudget(ratio=0.5, min_per_s=0.3, window_s=10.0, clock=FakeClock())
    for _ in range(4):
        budget.record_request()
    assert spend_all(budget) == 5  # 0.3 x 10 + 0.5 x 4 = 5


def test_fractional_allowance_rounds_up_to_the_next_retry() -> None:
    # retries < 2.5 lets a third retry through (2 < 2.5) but not a fourth.
    budget = RetryBudget(ratio=0.0, min_per_s=0.25, window_s=10.0, clock=FakeClock())
    assert spend_all(budget) == 3


def test_retries_are_not_requests() -> None:
    budget = RetryBudget(ratio=1.0, min_per_s=0.0, window_s=10.0, clock=FakeClock())
    budget.record_request()
    assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.requests_in_window == 1


def test_events_leave_the_window_once_their_bucket_no_longer_overlaps_it() -> None:
    clock = FakeClock(1000.5)
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window_s=10.0, clock=clock)
    budget.record_request()
    assert budget.try_spend()
    # Bucket 1000 holds [1000, 1001); it overlaps (now - 10, now] while now < 1011.
    clock.now = 1010.999
    assert budget.retries_in_window == 1
    assert budget.requests_in_window == 1
    clock.now = 1011.0
    assert budget.retries_in_window == 0
    assert budget.requests_in_window == 0


def test_exhaustion_then_recovery() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window_s=10.0, clock=clock)
    assert spend_all(budget) == 10
    clock.now = 1005.0
    assert not budget.try_spend()  # still inside the window
    clock.now = 1011.0
    assert budget.retries_in_window == 0
    assert spend_all(budget) == 10


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(ratio=0.0, min_per_s=0.4, window_s=10.0, clock=clock)  # 4 per window
    for second in (1000.0, 1001.0, 1002.0, 1003.0):
        clock.now = second
        assert budget.try_spend()
    clock.now = 1010.5
    assert not budget.try_spend()  # all four buckets still overlap (1000.5, 1010.5]
    clock.now = 1011.0
    assert budget.retries_in_window == 3  # bucket 1000 left
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now = 1013.0
    assert budget.retries_in_window == 2  # buckets 1003 and 1011


def test_expired_requests_stop_funding_retries() -> None:
    clock = FakeClock(1000.0)
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.record_request()
    clock.now = 1011.0
    assert budget.requests_in_window == 0
    assert not budget.try_spend()


def test_memory_is_bounded_by_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=1.0, min_per_s=1.0, window_s=2.5, clock=clock)
    for step in range(1000):
        clock.now = step * 0.5
        budget.record_request()
        budget.try_spend()
        assert len(budget._buckets) <= 4  # ceil(2.5) + 1


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "window_s"), [(-0.1, 1.0, 10.0), (0.2, -1.0, 10.0), (0.2, 1.0, 0.0)]
)
def test_rejects_invalid_settings(ratio: float, min_per_s: float, window_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryBudget(ratio=ratio, min_per_s=min_per_s, window_s=window_s)
