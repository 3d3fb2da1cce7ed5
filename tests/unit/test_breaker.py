"""The circuit breaker's transitions, driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.upstream.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so mypy does not narrow it across transitions."""
    return breaker.state


def open_breaker(clock: FakeClock, threshold: int = 3, open_s: float = 5.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, open_s=open_s, clock=clock)
    for _ in range(threshold):
        breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    return breaker


def test_starts_closed_and_available() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=FakeClock())
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available()
    assert breaker.consecutive_failures == 0


def test_state_values_are_the_documented_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_opens_exactly_at_the_threshold() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.consecutive_failures == 2
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available()
    breaker.record_failure()
    assert breaker.consecutive_failures == 3
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available()


def test_threshold_of_one_opens_on_first_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_s=5.0, clock=FakeClock())
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED  # 2 + 2 failures, never 3 in a row


def test_open_turns_half_open_after_open_s() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, open_s=5.0)
    clock.now = 104.999
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available()
    clock.now = 105.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.available()


def test_half_open_allows_a_single_probe() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    clock.now = 105.0
    assert breaker.available()
    breaker.on_pick()
    assert not breaker.available()
    assert state(breaker) is BreakerState.HALF_OPEN
    clock.now = 200.0  # time alone never frees the probe
    assert not breaker.available()


def test_on_pick_does_not_reserve_a_probe_when_closed() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=FakeClock())
    breaker.on_pick()
    breaker.on_pick()
    assert breaker.available()


def test_on_pick_while_open_does_not_block_the_later_probe() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    breaker.on_pick()
    clock.now = 105.0
    assert breaker.available()


def test_probe_success_closes() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    clock.now = 105.0
    breaker.on_pick()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available()
    assert breaker.consecutive_failures == 0


def test_probe_failure_reopens_for_another_open_s() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, open_s=5.0)
    clock.now = 106.0
    breaker.on_pick()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available()
    clock.now = 110.999
    assert state(breaker) is BreakerState.OPEN
    clock.now = 111.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.available()  # the failed probe no longer holds the slot


def test_failure_while_open_does_not_extend_the_open_period() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, open_s=5.0)
    clock.now = 104.0
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.consecutive_failures == 4
    clock.now = 105.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_success_closes_from_open() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available()


def test_release_frees_the_probe_slot() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock)
    clock.now = 105.0
    breaker.on_pick()
    assert not breaker.available()
    breaker.release()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.available()
    breaker.on_pick()
    assert not breaker.available()


def test_release_when_closed_changes_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_s=5.0, clock=FakeClock())
    breaker.record_failure()
    breaker.release()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 1


def test_force_open_from_closed() -> None:
    clock = FakeClock(100.0)
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=clock)
    breaker.force_open()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.available()
    clock.now = 105.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_force_open_restarts_the_open_period() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, open_s=5.0)
    clock.now = 104.0
    breaker.force_open()
    clock.now = 108.999
    assert state(breaker) is BreakerState.OPEN
    clock.now = 109.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_force_open_during_a_probe_clears_it() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, open_s=5.0)
    clock.now = 105.0
    breaker.on_pick()
    breaker.force_open()
    assert state(breaker) is BreakerState.OPEN
    clock.now = 110.0
    assert breaker.available()


def test_reopened_breaker_counts_afresh_after_closing() -> None:
    clock = FakeClock(100.0)
    breaker = open_breaker(clock, threshold=2)
    clock.now = 105.0
    breaker.on_pick()
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN


@pytest.mark.parametrize(("threshold", "open_s"), [(0, 5.0), (-1, 5.0), (3, 0.0), (3, -1.0)])
def test_rejects_invalid_settings(threshold: int, open_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failure_threshold=threshold, open_s=open_s)
