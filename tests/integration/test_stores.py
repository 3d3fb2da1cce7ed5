"""One contract for every store backend: the same tests against memory and Redis."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gateway.config.state import RedisSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import CachedResponse, Stores, VersionPolicy, memory_stores
from gateway.stores.protocols import RolloutRecord
from gateway.stores.redis_stores import redis_stores
from tests.integration.helpers import wait_until
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        yield memory_stores()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with redis_stores(RedisSettings(url=server.url), GatewayMetrics()) as shared:
        assert shared.link.up
        yield shared.stores


async def test_counters_hold_their_limit(stores: Stores) -> None:
    counters = stores.counters
    assert [await counters.acquire("m", 2) for _ in range(3)] == [True, True, False]
    assert await counters.value("m") == 2
    await counters.release("m")
    assert await counters.value("m") == 1
    assert await counters.acquire("m", 2)
    for _ in range(4):  # more releases than acquires: never below zero
        await counters.release("m")
    assert await counters.value("m") == 0
    assert await counters.value("other") == 0


async def test_counters_are_atomic_under_concurrency(stores: Stores) -> None:
    granted = await asyncio.gather(*(stores.counters.acquire("m", 7) for _ in range(40)))
    assert sum(granted) == 7
    assert await stores.counters.value("m") == 7


async def test_cache_keeps_bodies_and_events_until_they_expire(stores: Stores) -> None:
    cache = stores.cache
    body = CachedResponse(body=b'{"id":"x"}')
    events = CachedResponse(events=(b'{"a":1}', b"", b"\x00\xff" * 10))
    await cache.put("body", body, ttl_s=30)
    await cache.put("events", events, ttl_s=30)
    await cache.put("gone", body, ttl_s=0.05)
    await cache.put("never", body, ttl_s=0)
    assert await cache.get("body") == body
    assert await cache.get("events") == events
    assert await cache.get("missing") is None
    assert await cache.get("never") is None
    async with asyncio.timeout(5):
        while await cache.get("gone") is not None:  # noqa: ASYNC110 - store state
            await asyncio.sleep(0.02)


async def test_placement_tracks_adapters_per_engine(stores: Stores) -> None:
    placement = stores.adapters
    await placement.placed("lora-a", "e0")
    await placement.placed("lora-a", "e1")
    await placement.placed("lora-b", "e1")
    assert await placement.engines_with("lora-a") == {"e0", "e1"}
    await placement.removed("lora-a", "e0")
    assert await placement.engines_with("lora-a") == {"e1"}
    await placement.forget_engine("e1")
    assert await placement.engines_with("lora-a") == frozenset()
    assert await placement.engines_with("lora-b") == frozenset()


async def test_version_policies_keep_a_history_and_roll_back(stores: Stores) -> None:
    versions = stores.versions
    first = VersionPolicy(weights={"v1": 1.0})
    second = VersionPolicy(weights={"v1": 0.5, "v2": 0.5}, shadow={"v3": 0.1})
    assert await versions.get("chat") is None
    assert await versions.rollback("chat") is None
    await versions.set("chat", first)
    await versions.set("chat", second)
    assert await versions.get("chat") == second
    assert await versions.history("chat") == [first]
    assert await versions.rollback("chat") == first
    assert await versions.get("chat") == first
    assert await versions.history("chat") == []
    for n in range(25):  # bounded: the 20 newest are kept
        await versions.set("big", VersionPolicy(weights={f"v{n}": 1.0}))
    history = await versions.history("big")
    assert len(history) == 20
    assert history[0] == VersionPolicy(weights={"v23": 1.0})


async def test_measurements_sum_a_window_of_whole_seconds(stores: Stores) -> None:
    measurements = stores.measurements
    now = math.floor(time.time())
    for n in range(100):
        measurements.record("chat", "v2", at=now - 5 + n / 100, error=n < 3,
                            ttft_s=None if n < 3 else (2.0 if n >= 97 else 0.05))
    measurements.record("chat", "v2", at=now - 10, error=True, ttft_s=None)  # before
    measurements.record("chat", "v2", at=now, error=True, ttft_s=None)  # at until: after
    measurements.record("chat", "v1", at=now - 5, error=False, ttft_s=9.0)  # another

    async def counted() -> bool:  # a shared backend adds them in batches
        return (await measurements.window("chat", "v2", now - 5, now)).requests == 100

    await wait_until(counted, "the measurements to be counted", timeout_s=10)
    measured = await measurements.window("chat", "v2", now - 5, now)
    assert (measured.errors, measured.ttft_samples) == (3, 97)
    p50, p99 = measured.ttft_p50_s, measured.ttft_p99_s
    assert p50 is not None
    assert p99 is not None
    assert p50 == pytest.approx(0.05, rel=0.15)
    assert p99 == pytest.approx(2.0, rel=0.15)
    assert (await measurements.window("chat", "v2", now - 11, now)).errors == 4
    assert (await measurements.window("chat", "v2", now - 4, now)).requests == 0
    assert (await measurements.window("chat", "v2", now - 4, now + 1)).requests == 1
    assert (await measurements.window("chat", "v1", now - 5, now)).requests == 1


async def test_rollouts_start_once_and_have_one_driver_at_a_time(stores: Stores) -> None:
    rollouts = stores.rollouts
    before = VersionPolicy(weights={"v1": 1.0}, shadow={"v3": 0.5})
    first = RolloutRecord("chat", "v2", "v1", (10.0, 100.0), 60.0, before, started_at=5.0,
                          step_started=5.5, written=VersionPolicy({"v1": 90.0, "v2": 10.0}),
                          owner="a", decisions=({"action": "step", "step": 0},))
    assert await rollouts.get("chat") is None
    assert await rollouts.start(first, "a", 30)
    assert not await rollouts.start(first, "b", 30)  # one is running
    assert await rollouts.get("chat") == first

    second = replace(first, step=1, step_started=9.25, written=VersionPolicy({"v2": 100.0}))
    promote = {"action": "promote", "step": 0, "new": {"ttft_p99_s": 0.1}}
    assert await rollouts.update(second, "b", 30, [promote]) == "lost"  # a holds it
    assert await rollouts.update(second, "a", 30, [promote]) == "held"
    assert await rollouts.get("chat") == replace(second, decisions=(*first.decisions, promote))
    assert not await rollouts.take("chat", "b", 30)

    cancelled = {"action": "cancelled", "step": 1}
    assert await rollouts.cancel("chat", cancelled)
    stored = await rollouts.get("chat")
    assert stored is not None
    assert (stored.state, stored.decisions[-1]) == ("cancelled", cancelled)
    assert await rollouts.update(second, "a", 30) == "stopped"  # its driver stops
    assert not await rollouts.cancel("chat", cancelled)
    assert not await rollouts.take("chat", "b", 30)

    again = replace(first, decisions=())
    assert await rollouts.start(again, "b", 0.05)  # the lease of a replica that dies
    assert (await rollouts.get("chat")) == again  # the old decisions are gone

    async def taken() -> bool:
        return await rollouts.take("chat", "a", 30)

    await wait_until(taken, "the lapsed lease to be taken", timeout_s=10)
    assert await rollouts.update(again, "b", 30) == "lost"
    await rollouts.release("chat", "b")  # not b's: nothing happens
    assert not await rollouts.take("chat", "b", 30)
    await rollouts.release("chat", "a")
    assert await rollouts.take("chat", "b", 30)
    assert await rollouts.update(replace(again, state="done"), "b", 30) == "held"
    assert not await rollouts.take("chat", "a", 30)  # no longer running
    assert await rollouts.start(first, "a", 30)
