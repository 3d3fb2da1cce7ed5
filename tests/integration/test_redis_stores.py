"""What only the Redis backends do: share state between replicas, expire a crashed
replica's slots, ride out an outage and recover, notify policy changes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from gateway.config.state import RedisSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import CachedResponse, VersionPolicy
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_counters import RedisCounters
from gateway.stores.redis_link import RedisLink
from gateway.stores.redis_measurements import RedisMeasurements
from gateway.stores.redis_stores import RedisState, redis_stores
from gateway.stores.redis_versions import watch_versions
from tests.integration.helpers import wait_until
from tests.redis_server import RedisServer

Replica = Callable[..., Awaitable[tuple[RedisState, GatewayMetrics]]]
FAST = {"probe_interval_s": 0.1, "slot_ttl_s": 0.6, "command_timeout_s": 0.3,
        "connect_timeout_s": 0.3}


@pytest.fixture
async def replica(redis_server: RedisServer) -> AsyncIterator[Replica]:
    """``await replica(**redis_settings)``: the stores of one more gateway replica."""
    async with AsyncExitStack() as stack:
        async def open_one(**overrides: Any) -> tuple[RedisState, GatewayMetrics]:
            metrics = GatewayMetrics()
            settings = RedisSettings(url=redis_server.url, **{**FAST, **overrides})
            return await stack.enter_async_context(redis_stores(settings, metrics)), metrics
        yield open_one


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    await wait_until(check, "the condition", timeout_s=10.0)


async def test_replicas_share_one_limit(replica: Replica) -> None:
    (a, _), (b, _) = await replica(), await replica()
    granted = await asyncio.gather(*(r.stores.counters.acquire("admission:m", 5)
                                     for _ in range(20) for r in (a, b)))
    assert sum(granted) == 5
    assert await a.stores.counters.value("admission:m") == 5
    await b.stores.counters.release("admission:m")  # b's own slot, if it holds one
    await a.stores.counters.release("admission:m")
    assert await b.stores.counters.value("admission:m") < 5


async def test_a_crashed_replicas_slots_expire(replica: Replica) -> None:
    (a, _), (b, _) = await replica(), await replica()
    assert await a.stores.counters.acquire("k", 2)
    assert await a.stores.counters.acquire("k", 2)
    assert not await b.stores.counters.acquire("k", 2)
    a.link._beats.clear()  # a crashes: its lease is not renewed, nothing is given back
    await _until(lambda: b.stores.counters.acquire("k", 2))
    assert await b.stores.counters.value("k") == 1


async def test_a_closed_replica_gives_its_slots_back(redis_server: RedisServer,
                                                     replica: Replica) -> None:
    (b, _) = await replica()
    settings = RedisSettings(url=redis_server.url, **FAST)
    async with redis_stores(settings, GatewayMetrics()) as a:
        assert await a.stores.counters.acquire("k", 1)
        assert not await b.stores.counters.acquire("k", 1)
    assert await b.stores.counters.acquire("k", 1)  # at once, not after the lease


async def test_outage_fails_open_then_recovers_and_resyncs(
        redis_server: RedisServer, replica: Replica) -> None:
    (a, metrics), (b, _) = await replica(), await replica()
    counters, cache = a.stores.counters, a.stores.cache
    assert await counters.acquire("k", 3)  # held in Redis across the outage
    await cache.put("c", CachedResponse(body=b"x"), ttl_s=30)
    assert _sample(metrics, "sluice_redis_up") == 1

    redis_server.kill()
    await _until(lambda: _async(not a.link.up))
    assert _sample(metrics, "sluice_redis_up") == 0
    assert a.link.last_error
    # Open: counted here alone, against the same limit.
    assert [await counters.acquire("k", 3) for _ in range(4)] == [True, True, True, False]
    assert await cache.get("c") is None  # skipped, not an error
    await cache.put("d", CachedResponse(body=b"y"), ttl_s=30)
    await counters.release("k")  # a local slot
    await counters.release("k")
    await counters.release("k")
    await counters.release("k")  # the Redis slot: the ledger drops it, the key is dirty
    assert _sample(metrics, "sluice_redis_errors_total", op="ping") >= 1
    assert _sample(metrics, "sluice_redis_bypassed_total", store="counters") >= 4
    assert _sample(metrics, "sluice_redis_bypassed_total", store="cache") == 2

    redis_server.start()  # empty: the restart lost every key
    await _until(lambda: _async(a.link.up and b.link.up))
    assert _sample(metrics, "sluice_redis_up") == 1
    assert await counters.acquire("k", 3)
    assert await b.stores.counters.acquire("k", 3)
    await _until(lambda: _eq(counters.value("k"), 2))
    assert await cache.get("d") is None  # written while down: never stored


async def test_resync_corrects_a_count_redis_kept(redis_server: RedisServer,
                                                  replica: Replica) -> None:
    (a, _), (b, _) = await replica(), await replica()
    assert await a.stores.counters.acquire("k", 2)
    assert await a.stores.counters.acquire("k", 2)
    a.link.up = False  # a short outage seen only by a: its releases do not reach Redis
    await a.stores.counters.release("k")
    await a.stores.counters.release("k")
    assert not await b.stores.counters.acquire("k", 2)  # Redis still counts them
    # a's next probe marks it up and its beat writes its ledger (0) over its field.
    await _until(lambda: _eq(b.stores.counters.value("k"), 0))
    assert await b.stores.counters.acquire("k", 2)


async def test_fail_closed_refuses_while_down(redis_server: RedisServer,
                                              replica: Replica) -> None:
    (a, _) = await replica(fail_open=False)
    redis_server.kill()
    await _until(lambda: _async(not a.link.up))
    with pytest.raises(StoreUnavailable) as refused:
        await a.stores.counters.acquire("k", 10)
    assert refused.value.status_code == 503
    assert refused.value.headers["Retry-After"] == "1"


async def test_versions_read_last_known_while_down_and_writes_fail(
        redis_server: RedisServer, replica: Replica) -> None:
    (a, _) = await replica()
    policy = VersionPolicy(weights={"v1": 1.0})
    await a.stores.versions.set("chat", policy)
    await a.stores.adapters.placed("lora", "e0")
    redis_server.kill()
    await _until(lambda: _async(not a.link.up))
    assert await a.stores.versions.get("chat") == policy
    assert await a.stores.adapters.engines_with("lora") == {"e0"}
    with pytest.raises(StoreUnavailable):
        await a.stores.versions.set("chat", VersionPolicy(weights={"v2": 1.0}))


async def test_policy_changes_reach_other_replicas(replica: Replica) -> None:
    (a, _), (b, _) = await replica(), await replica()
    seen: asyncio.Queue[str | None] = asyncio.Queue(maxsize=100)
    channel = b.stores.versions.channel  # type: ignore[attr-defined]
    watcher = asyncio.create_task(watch_versions(b.link, channel, seen.put))
    try:
        async with asyncio.timeout(10):
            assert await seen.get() is None  # subscribed: reload everything once
            await a.stores.versions.set("chat", VersionPolicy(weights={"v1": 1.0}))
            assert await seen.get() == "chat"
            await a.stores.versions.set("chat", VersionPolicy(weights={"v2": 1.0}))
            await a.stores.versions.rollback("chat")
            assert [await seen.get(), await seen.get()] == ["chat", "chat"]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_measurements_of_every_replica_add_up_in_batches(replica: Replica) -> None:
    (a, _), (b, _) = await replica(measure_flush_s=0.1), await replica(measure_flush_s=0.1)
    now = math.floor(time.time())
    before = await _command_calls(a, "hincrby")
    for _ in range(1000):  # one request each: counted locally, no Redis call
        a.stores.measurements.record("chat", "v2", at=now, error=False, ttft_s=0.05)
    for _ in range(20):  # 2 % of the TTFTs: the p99 is among them
        b.stores.measurements.record("chat", "v2", at=now, error=False, ttft_s=3.0)
    b.stores.measurements.record("chat", "v2", at=now, error=True, ttft_s=None)

    async def both_counted() -> bool:
        window = await a.stores.measurements.window("chat", "v2", now, now + 1)
        return window.requests == 1021

    await _until(both_counted)
    window = await a.stores.measurements.window("chat", "v2", now, now + 1)
    assert window.errors == 1
    assert window.ttft_p99_s == pytest.approx(3.0, rel=0.15)  # b's slow tail, read by a
    # One HINCRBY per second, kind and bucket: 1021 requests took at most a handful.
    assert await _command_calls(a, "hincrby") - before <= 6
    ttl = await a.link.client.ttl(a.link.key("measure", "chat", "v2", str(now // 60)))
    assert 0 < ttl <= a.stores.measurements.retention_s + 60


async def test_measurements_ride_out_an_outage(redis_server: RedisServer,
                                               replica: Replica) -> None:
    (a, metrics), (b, _) = await replica(measure_flush_s=0.1), await replica()
    now = math.floor(time.time())
    measurements = a.stores.measurements
    measurements.record("chat", "v2", at=now - 2, error=False, ttft_s=0.1)
    await _until(lambda: _eq(_requests(b, now - 2, now), 1))

    redis_server.kill()
    await _until(lambda: _async(not a.link.up))
    for _ in range(5):
        measurements.record("chat", "v2", at=now - 1, error=True, ttft_s=None)
    await asyncio.sleep(0.3)  # flushes fail meanwhile; the counts are kept
    assert isinstance(measurements, RedisMeasurements)
    assert measurements.pending == 1
    own = await measurements.window("chat", "v2", now - 2, now)  # this replica's own
    assert (own.requests, own.errors) == (6, 5)
    assert _sample(metrics, "sluice_redis_bypassed_total", store="measurements") == 1

    redis_server.start()  # empty: the restart lost the first flush
    await _until(lambda: _eq(_requests(b, now - 2, now), 5))
    assert measurements.pending == 0
    shared = await b.stores.measurements.window("chat", "v2", now - 2, now)
    assert shared.errors == 5


async def test_unflushed_measurements_are_kept_only_within_their_retention(
        redis_server: RedisServer) -> None:
    clock = [1000.0]
    link = RedisLink(RedisSettings(url=redis_server.url, **FAST), GatewayMetrics())
    try:  # never probed: down, every flush fails at once
        measurements = RedisMeasurements(link, GatewayMetrics(), retention_s=60,
                                         flush_s=0.1, clock=lambda: clock[0])
        measurements.record("chat", "v2", at=1000.0, error=False, ttft_s=0.1)
        await measurements.flush()
        measurements.record("chat", "v2", at=1030.0, error=False, ttft_s=0.1)
        await measurements.flush()
        assert measurements.pending == 2
        clock[0] = 1075.0  # the first second is past its retention
        await measurements.flush()
        assert measurements.pending == 1
        assert await link.probe()
        await measurements.flush()
        assert measurements.pending == 0
        assert (await measurements.window("chat", "v2", 900, 1100)).requests == 1
    finally:
        await link.aclose()


async def _requests(state: RedisState, since: int, until: int) -> int:
    return (await state.stores.measurements.window("chat", "v2", since, until)).requests


async def _command_calls(state: RedisState, command: str) -> int:
    stats = await state.link.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_gateway_starts_while_redis_is_down(redis_server: RedisServer) -> None:
    redis_server.kill()
    metrics = GatewayMetrics()
    settings = RedisSettings(url=redis_server.url, **FAST)
    async with redis_stores(settings, metrics) as state:
        assert not state.link.up
        assert await state.stores.counters.acquire("k", 1)  # open: counted here
        redis_server.start()
        await _until(lambda: _async(state.link.up))
        assert isinstance(state.stores.counters, RedisCounters)


async def test_link_counts_each_failed_operation(redis_server: RedisServer) -> None:
    metrics = GatewayMetrics()
    link = RedisLink(RedisSettings(url=redis_server.url, **FAST), metrics)
    try:
        assert await link.probe()
        redis_server.kill()
        assert not await link.probe()
        assert _sample(metrics, "sluice_redis_errors_total", op="ping") == 1
        assert "ping" in link.last_error
    finally:
        await link.aclose()


async def test_after_a_restart_no_pooled_connection_fails_a_command(
        redis_server: RedisServer) -> None:
    metrics = GatewayMetrics()
    link = RedisLink(RedisSettings(url=redis_server.url, **FAST), metrics)

    async def ping(op: str) -> None:
        await link.call(op, link.client.ping)

    try:
        assert await link.probe()
        await asyncio.gather(*(ping("before") for _ in range(4)))  # four pooled connections
        redis_server.kill()
        assert not await link.probe()
        redis_server.start()
        assert await link.probe()
        await asyncio.gather(*(ping("after") for _ in range(4)))
        assert link.up
        assert _sample(metrics, "sluice_redis_errors_total", op="after") == 0
    finally:
        await link.aclose()


async def _async(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
