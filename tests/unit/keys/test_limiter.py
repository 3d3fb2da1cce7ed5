"""The rate limiter contract on a fake clock, run against both backends: the memory
limiter, and the Redis limiter's Lua scripts (on a redis-server of the test's own,
the fake clock standing in for Redis ``TIME``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.state import RedisSettings
from gateway.keys import WINDOW_S, Limits, MemoryRateLimiter, RateLimiter
from gateway.keys.redis import RedisRateLimiter
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.redis_link import RedisLink
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: FakeClock
                  ) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(clock=clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    link = RedisLink(RedisSettings(url=server.url), GatewayMetrics())
    assert await link.probe()
    try:
        yield RedisRateLimiter(link, clock=clock)
    finally:
        await link.aclose()


async def test_exactly_rpm_requests_pass_under_concurrency(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.admit("k-1", Limits(rpm=10))
                                       for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    refused = [d for d in decisions if not d.allowed]
    assert {d.limit for d in refused} == {"rpm"}
    assert all(d.retry_after_s == WINDOW_S for d in refused)


async def test_the_window_slides_one_slot_at_a_time(limiter: RateLimiter,
                                                    clock: FakeClock) -> None:
    for offset in (0.0, 10.0, 20.0):  # three admissions, 10 s apart
        clock.now = 1000.0 + offset
        assert (await limiter.admit("k-1", Limits(rpm=3))).allowed
    clock.now = 1030.0
    refused = await limiter.admit("k-1", Limits(rpm=3))
    assert (refused.allowed, refused.limit) == (False, "rpm")
    assert refused.retry_after_s == pytest.approx(30.0)  # the first leaves at 1060
    clock.now = 1059.9
    assert not (await limiter.admit("k-1", Limits(rpm=3))).allowed
    clock.now = 1060.0
    assert (await limiter.admit("k-1", Limits(rpm=3))).allowed  # the first slot is free
    assert not (await limiter.admit("k-1", Limits(rpm=3))).allowed  # and taken again
    clock.now = 1070.0
    assert (await limiter.admit("k-1", Limits(rpm=3))).allowed  # the second's


async def test_refused_requests_take_no_slot(limiter: RateLimiter,
                                             clock: FakeClock) -> None:
    assert (await limiter.admit("k-1", Limits(rpm=1))).allowed
    for step in range(59):  # refused once a second for the rest of the minute
        clock.now = 1000.0 + step
        assert not (await limiter.admit("k-1", Limits(rpm=1))).allowed
    clock.now = 1060.0
    assert (await limiter.admit("k-1", Limits(rpm=1))).allowed


async def test_keys_are_limited_apart(limiter: RateLimiter) -> None:
    assert (await limiter.admit("k-1", Limits(rpm=1))).allowed
    assert (await limiter.admit("k-2", Limits(rpm=1))).allowed
    assert not (await limiter.admit("k-1", Limits(rpm=1))).allowed


async def test_tpm_is_charged_after_the_fact(limiter: RateLimiter,
                                             clock: FakeClock) -> None:
    limits = Limits(tpm=100)
    # Admission charges no tokens: both requests start before either has finished.
    assert (await limiter.admit("k-1", limits)).allowed
    assert (await limiter.admit("k-1", limits)).allowed
    await limiter.charge("k-1", 60)
    assert (await limiter.admit("k-1", limits)).allowed  # 60 of 100 spent
    clock.now = 1010.5
    await limiter.charge("k-1", 70)  # 130: over, as the tokens were really streamed
    refused = await limiter.admit("k-1", limits)
    assert (refused.allowed, refused.limit) == (False, "tpm")
    # The first 60 tokens (second 1000) leave the window at 1061; 70 < 100 then.
    assert refused.retry_after_s == pytest.approx(1061.0 - 1010.5)
    clock.now = 1060.9
    assert not (await limiter.admit("k-1", limits)).allowed
    clock.now = 1061.0
    assert (await limiter.admit("k-1", limits)).allowed
    clock.now = 1071.0
    assert (await limiter.admit("k-1", limits)).allowed


async def test_tokens_count_for_at_least_a_minute(limiter: RateLimiter,
                                                  clock: FakeClock) -> None:
    clock.now = 1000.9
    await limiter.charge("k-1", 10)
    clock.now = 1060.9  # exactly a minute later: still counted
    assert not (await limiter.admit("k-1", Limits(tpm=10))).allowed


async def test_rpm_refuses_before_tpm(limiter: RateLimiter) -> None:
    limits = Limits(rpm=1, tpm=5)
    assert (await limiter.admit("k-1", limits)).allowed
    await limiter.charge("k-1", 5)
    assert (await limiter.admit("k-1", limits)).limit == "rpm"


async def test_a_tpm_refusal_takes_no_request_slot(limiter: RateLimiter,
                                                   clock: FakeClock) -> None:
    await limiter.charge("k-1", 5)
    limits = Limits(rpm=2, tpm=5)
    for _ in range(5):
        assert (await limiter.admit("k-1", limits)).limit == "tpm"
    clock.now += 61
    assert (await limiter.admit("k-1", limits)).allowed
    assert (await limiter.admit("k-1", limits)).allowed


async def test_a_lowered_limit_waits_for_enough_to_leave(limiter: RateLimiter,
                                                         clock: FakeClock) -> None:
    for offset in range(4):
        clock.now = 1000.0 + offset
        assert (await limiter.admit("k-1", Limits(rpm=4))).allowed
    refused = await limiter.admit("k-1", Limits(rpm=2))
    assert refused.retry_after_s == pytest.approx(1062.0 - 1003.0)  # the third leaves


async def test_no_limits_admit_everything(limiter: RateLimiter) -> None:
    for _ in range(1000):
        assert (await limiter.admit("k-1", Limits())).allowed
