"""Wrong admin tokens per address: free tries, then waits doubling to a ceiling."""

from __future__ import annotations

import pytest

from gateway.core.errors import TooManyFailures
from gateway.edge.lockout import FailedAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def waits(attempts: FailedAttempts, address: str) -> str | None:
    try:
        attempts.check(address)
    except TooManyFailures as exc:
        return exc.headers["Retry-After"]
    return None


def test_waits_double_after_the_free_failures_up_to_the_ceiling() -> None:
    clock = Clock()
    attempts = FailedAttempts(free=3, base_s=1, max_s=8, clock=clock)
    seen = []
    for _ in range(8):
        seen.append(waits(attempts, "a"))
        attempts.failed("a")
        clock.now += 0.1
    assert seen == [None, None, None, "1", "2", "4", "8", "8"]
    assert waits(attempts, "b") is None  # per address
    clock.now += 8
    assert waits(attempts, "a") is None
    attempts.succeeded("a")
    attempts.failed("a")
    assert waits(attempts, "a") is None  # a success started the count over


def test_addresses_are_bounded_and_forgotten() -> None:
    clock = Clock()
    attempts = FailedAttempts(free=1, base_s=60, max_s=60, forget_s=100,
                              max_addresses=2, clock=clock)
    for address in ("a", "b", "c"):
        attempts.failed(address)
    assert waits(attempts, "a") is None  # the oldest went first
    assert waits(attempts, "c") == "60"
    clock.now += 101
    assert waits(attempts, "c") is None


@pytest.mark.parametrize("free", [1, 5])
def test_the_free_failures_are_not_held(free: int) -> None:
    attempts = FailedAttempts(free=free, clock=Clock())
    for _ in range(free - 1):
        attempts.failed("a")
    assert waits(attempts, "a") is None
