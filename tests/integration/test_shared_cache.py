"""The response cache over Redis: the store and lease contract on both backends, and two
real ``sluice serve`` processes sharing one redis-server (a hit through the other
gateway, chat and embeddings; 50 identical requests split over both on one upstream
call)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.state import RedisSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import CachedResponse, Locks, MemoryLocks, ResponseCache, memory_stores
from gateway.stores.redis_stores import redis_stores
from loadtests.fleet import gateway_launch
from loadtests.launch import launched
from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import events_of, sim_handled, sim_received
from tests.redis_server import RedisServer

Serve = Callable[..., Awaitable[str]]
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0}


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest
                  ) -> AsyncIterator[tuple[ResponseCache, Locks]]:
    if request.param == "memory":
        yield memory_stores().cache, MemoryLocks()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with redis_stores(RedisSettings(url=server.url), GatewayMetrics()) as shared:
        assert shared.stores.locks is not None
        yield shared.stores.cache, shared.stores.locks


async def test_a_stream_is_stored_with_its_usage_apart(
        backend: tuple[ResponseCache, Locks]) -> None:
    cache, _ = backend
    stream = CachedResponse(events=(b'{"a":1}', b'{"b":2}'), usage=b'{"usage":{}}')
    await cache.put("s", stream, ttl_s=30)
    assert await cache.get("s") == stream


async def test_a_lease_has_one_owner_until_released_or_expired(
        backend: tuple[ResponseCache, Locks]) -> None:
    _, locks = backend
    assert await locks.acquire("k", "one", 30)
    assert not await locks.acquire("k", "two", 30)
    assert await locks.held("k")
    await locks.release("k", "two")  # not its lease: nothing happens
    assert await locks.held("k")
    await locks.release("k", "one")
    assert not await locks.held("k")
    assert await locks.acquire("short", "one", 0.05)
    async with asyncio.timeout(5):
        while await locks.held("short"):  # noqa: ASYNC110 - store state
            await asyncio.sleep(0.02)
    assert await locks.acquire("short", "two", 30)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(sim_url, redis_url)``: a ``sluice serve`` process, ready; its URL."""
    async with AsyncExitStack() as stack:
        names = iter(range(100))

        async def start(sim: str, redis: str) -> str:
            launch = gateway_launch({
                "default_engine": False, "access_log": False,
                "engines": [{"name": "sim", "url": sim}],
                "redis": {"url": redis, "probe_interval_s": 0.2, "slot_ttl_s": 3.0},
                "cache": {"enabled": True}}, tmp_path, f"gateway-{next(names)}")
            await stack.enter_async_context(
                launched(launch, ready_timeout_s=30, all_engines=True))
            return launch.url

        yield start


async def post(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    response = await http.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


async def test_an_answer_made_through_one_gateway_is_a_hit_through_the_other(
        redis_server: RedisServer, start_sim: StartSim, serve: Serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    one, two = [await serve(sim, redis_server.url) for _ in range(2)]
    async with httpx.AsyncClient(timeout=30) as http:
        for stream in (False, True):
            body = {**CHAT, "stream": stream}
            first = await post(http, one, body)
            called = await sim_received(http, sim)
            again = await post(http, two, body)
            assert await sim_received(http, sim) == called
            assert first.headers["x-sluice-cache"] == "miss"
            assert again.headers["x-sluice-cache"] == "hit"
            assert events_of(again.content) == events_of(first.content)
        assert await sim_received(http, sim) == 2
        embed = {"model": "sim-model", "input": ["one", "two words"], "dimensions": 8}
        first = await http.post(one + "/v1/embeddings", json=embed)
        again = await http.post(two + "/v1/embeddings", json=embed)
        assert await sim_handled(http, sim, "/v1/embeddings") == 1
        assert (first.headers["x-sluice-cache"], again.headers["x-sluice-cache"]) == (
            "miss", "hit")
        assert again.content == first.content


async def test_fifty_identical_requests_over_two_gateways_make_one_upstream_call(
        redis_server: RedisServer, start_sim: StartSim, serve: Serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=50, decode_step_ms=20))  # ~0.2 s
    gateways = [await serve(sim, redis_server.url) for _ in range(2)]
    body = {**CHAT, "stream": True}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)
                                 ) as http:
        answers = await asyncio.gather(*(post(http, gateways[i % 2], body)
                                         for i in range(50)))
        assert await sim_received(http, sim) == 1
    results = sorted(response.headers["x-sluice-cache"] for response in answers)
    assert results == ["coalesced"] * 49 + ["miss"]
    assert all(events_of(a.content) == events_of(answers[0].content) for a in answers)


async def test_with_redis_down_requests_are_answered_without_the_cache(
        redis_server: RedisServer, start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    gateway = await start_gateway([sim], redis={"url": redis_server.url,
                                                "probe_interval_s": 0.2, "slot_ttl_s": 3.0})
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await post(http, gateway, CHAT)).headers["x-sluice-cache"] == "miss"
        assert (await post(http, gateway, CHAT)).headers["x-sluice-cache"] == "hit"
        redis_server.kill()
        for _ in range(3):  # no store to read or write, no lease to wait on: each calls
            assert (await post(http, gateway, CHAT)).headers["x-sluice-cache"] == "miss"
        assert await sim_received(http, sim) == 4
