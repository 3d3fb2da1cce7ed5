"""Managed API keys through a Redis outage, on a real redis-server killed and started
again: keys this gateway has seen keep authenticating and keep their RPM (held by this
replica alone), unseen keys are a 503, `fail_open: false` refuses limited keys with 503,
revocations published by one replica reach another's records, and all recovers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.config.state import RedisSettings
from gateway.keys import KeyService, hash_key
from gateway.keys.outage import LastKnownKeys
from gateway.keys.redis import redis_keys
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.redis_link import RedisLink
from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import wait_until
from tests.redis_server import RedisServer

ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATIC = {"Authorization": "Bearer sk-static-0123456789abcdef"}
FAST = SimConfig(decode_step_ms=1, prefill_base_ms=1)
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
RPM = 4


async def keyed_gateway(start_sim: StartSim, start_gateway: StartGateway, redis: RedisServer,
                        **redis_settings: object) -> str:
    sim = await start_sim(FAST)
    return await start_gateway(
        [sim], admin={"token": ADMIN_TOKEN}, api_keys=[STATIC["Authorization"][7:]],
        redis={"url": redis.url, "probe_interval_s": 0.2, "slot_ttl_s": 3.0,
               **redis_settings})


async def create_key(http: httpx.AsyncClient, **spec: object) -> str:
    response = await http.post("/admin/keys", headers=ADMIN, json={"name": "t", **spec})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


async def chat(http: httpx.AsyncClient, key: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=CHAT,
                           headers={"Authorization": f"Bearer {key}"})


async def redis_state(http: httpx.AsyncClient) -> tuple[bool, float]:
    """``/ready``'s redis.up and ``sluice_redis_up`` (read with the static key)."""
    up = (await http.get("/ready", headers=STATIC)).json()["redis"]["up"]
    return up, metric(await metrics_page(http), "sluice_redis_up")


async def metrics_page(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics", headers=STATIC)).text


def metric(page: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", page, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


async def test_seen_keys_keep_their_limits_through_an_outage_and_all_recovers(
        durable_redis_server: RedisServer, start_sim: StartSim,
        start_gateway: StartGateway) -> None:
    redis = durable_redis_server
    gateway = await keyed_gateway(start_sim, start_gateway, redis)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        used = await create_key(http, rpm=RPM)
        unused = await create_key(http, rpm=RPM)
        before = await chat(http, used)  # seen here; the Redis window: 1 of RPM
        assert await redis_state(http) == (True, 1.0)

        redis.kill()

        async def down() -> bool:
            return await redis_state(http) == (False, 0.0)

        await wait_until(down, "the gateway to report redis down")
        during = [await chat(http, used) for _ in range(RPM + 2)]
        never = await chat(http, unused)
        static = await http.post("/v1/chat/completions", json=CHAT, headers=STATIC)
        ready_down = (await http.get("/ready", headers=STATIC)).json()
        page_down = await metrics_page(http)

        redis.start()  # from its append-only file: the keys and the windows are back

        async def up() -> bool:
            return await redis_state(http) == (True, 1.0)

        await wait_until(up, "the gateway to report redis up again")
        after = [await chat(http, used) for _ in range(RPM)]
        recovered = await chat(http, unused)
        page_up = await metrics_page(http)

    assert before.status_code == 200
    assert [r.status_code for r in during] == [200] * RPM + [429] * 2
    refused = during[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert f"is limited to {RPM} requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert never.status_code == 503
    assert never.json()["error"]["type"] == "service_unavailable"
    assert "API key store is unreachable" in never.json()["error"]["message"]
    assert int(never.headers["retry-after"]) >= 1
    assert static.status_code == 200
    assert ready_down["status"] == "ready"
    assert ready_down["redis"]["up"] is False
    assert ready_down["redis"]["last_error"]
    for page in (page_down, page_up):
        assert metric(page, 'sluice_redis_bypassed_total{store="keys"}') == RPM + 2
        assert metric(page, 'sluice_redis_bypassed_total{store="limits"}') == RPM + 2
    # Back on the Redis window, which held the one request before the outage; the
    # requests admitted locally during it are not added to it.
    assert [r.status_code for r in after] == [200] * (RPM - 1) + [429]
    assert recovered.status_code == 200


async def test_with_fail_open_off_requests_are_refused_with_503(
        redis_server: RedisServer, start_sim: StartSim, start_gateway: StartGateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway, redis_server, fail_open=False)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        limited = await create_key(http, rpm=RPM)
        assert (await chat(http, limited)).status_code == 200
        redis_server.kill()

        async def down() -> bool:
            return (await redis_state(http))[0] is False

        await wait_until(down, "the gateway to report redis down")
        refused = await chat(http, limited)
        unlimited = await chat(http, STATIC["Authorization"][7:])  # admission alone
        page = await metrics_page(http)
    assert unlimited.status_code == 503  # the store is down: not the client's 429
    assert unlimited.headers["retry-after"] == "1"
    assert unlimited.json()["error"]["code"] == "store_unavailable"
    assert "admission counters are unreachable" in unlimited.json()["error"]["message"]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "service_unavailable"
    assert error["code"] == "store_unavailable"
    assert "redis.fail_open is off" in error["message"]
    assert metric(page, 'sluice_redis_bypassed_total{store="limits"}') == 1


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[list[RedisLink]]:
    """The Redis links of two replicas, probed up."""
    opened = [RedisLink(RedisSettings(url=redis_server.url, probe_interval_s=0.1,
                                      slot_ttl_s=0.6), GatewayMetrics()) for _ in range(2)]
    try:
        for link in opened:
            assert await link.probe()
        yield opened
    finally:
        for link in opened:
            await link.aclose()


async def test_a_revocation_on_one_replica_reaches_the_records_of_another(
        redis_server: RedisServer, links: list[RedisLink]) -> None:
    (one, unwatched), (two, watch) = (redis_keys(link, GatewayMetrics()) for link in links)
    unwatched.close()  # only the second replica's records are watched here
    watcher = asyncio.create_task(watch)
    try:
        new = await one.create("ci", rpm=5)
        assert await two.identify(new.secret) == new.record  # two remembers it
        await one.revoke(new.record.id)

        async def revoked_on_two() -> bool:
            known = _known(two).known(hash_key(new.secret))
            return known is not None and known.revoked

        await wait_until(revoked_on_two, "the revocation to reach the other replica")
        redis_server.kill()
        assert not await links[1].probe()
        found = await two.identify(new.secret)
        assert found is not None
        assert found.revoked
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _known(service: KeyService) -> LastKnownKeys:
    assert isinstance(service.store, LastKnownKeys)
    return service.store

