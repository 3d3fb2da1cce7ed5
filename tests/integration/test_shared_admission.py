"""Two real ``sluice serve`` processes sharing one redis-server: one admission limit for
both, one set of managed keys and their RPM/TPM windows, and an outage of Redis under
load that no client notices."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from simulator import SimConfig
from tests.integration.conftest import ServeGateway
from tests.integration.helpers import wait_until
from tests.redis_server import RedisServer

Serve = Callable[..., Awaitable[str]]
LIMIT = 4
CHAT = {"model": "sim-model", "max_tokens": 30,
        "messages": [{"role": "user", "content": "count slowly"}]}


@pytest.fixture
def serve(serve_gateway: ServeGateway) -> Serve:
    """``await serve(sim_url, redis_url, **settings)``: a gateway process, ready; its URL
    (Redis probed every 0.2 s, slot leases of 3 s)."""
    async def start(sim: str, redis: str, **overrides: Any) -> str:
        return await serve_gateway([sim], redis, **overrides,
                                   redis={"probe_interval_s": 0.2, "slot_ttl_s": 3.0})
    return start


async def _running(http: httpx.AsyncClient, sim: str) -> int:
    text = (await http.get(sim + "/metrics")).text
    match = re.search(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def _redis_state(http: httpx.AsyncClient, url: str) -> tuple[bool, float]:
    """``/ready``'s redis.up and ``sluice_redis_up`` of one gateway."""
    up = (await http.get(url + "/ready")).json()["redis"]["up"]
    metrics = (await http.get(url + "/metrics")).text
    gauge = re.search(r"^sluice_redis_up (\S+)$", metrics, re.MULTILINE)
    assert gauge is not None
    return up, float(gauge.group(1))


async def test_one_admission_limit_holds_across_two_gateways(
        redis_server: RedisServer, start_sim, serve: Serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=20))  # ~0.6 s each
    admission = {"models": {"sim-model": LIMIT}}
    gateways = [await serve(sim, redis_server.url, admission=admission) for _ in range(2)]
    peak, done = 0, asyncio.Event()

    async with httpx.AsyncClient(timeout=30) as http:
        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, await _running(http, sim))
                await asyncio.sleep(0.01)

        async def one(i: int) -> int:
            await asyncio.sleep(0.01 * (i % 8))
            url = gateways[i % 2]
            return (await http.post(url + "/v1/chat/completions", json=CHAT)).status_code

        watcher = asyncio.create_task(watch())
        statuses = await asyncio.gather(*(one(i) for i in range(24)))
        done.set()
        await watcher
    print(f"\nshared admission: limit {LIMIT}, 24 requests over 2 gateways: "
          f"{statuses.count(200)} x 200, {statuses.count(429)} x 429, engine peak {peak}")
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0
    assert statuses.count(200) >= LIMIT
    assert peak <= LIMIT


ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_a_keys_limits_hold_across_two_gateways(
        redis_server: RedisServer, start_sim, serve: Serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=2))
    gateways = [await serve(sim, redis_server.url, admin={"token": ADMIN_TOKEN})
                for _ in range(2)]
    rpm = 8
    async with httpx.AsyncClient(timeout=30) as http:
        made = await http.post(gateways[0] + "/admin/keys", headers=ADMIN,
                               json={"name": "shared", "rpm": rpm})
        assert made.status_code == 201, made.text
        auth = {"Authorization": f"Bearer {made.json()['key']}"}
        answers = await asyncio.gather(*(
            http.post(gateways[i % 2] + "/v1/chat/completions", headers=auth,
                      json={**CHAT, "max_tokens": 4, "stream": i % 3 == 0})
            for i in range(30)))
        listed = (await http.get(gateways[1] + "/admin/keys", headers=ADMIN)).json()

        tpm = await http.post(gateways[1] + "/admin/keys", headers=ADMIN,
                              json={"name": "tokens", "tpm": 20})
        assert tpm.status_code == 201, tpm.text
        tpm_auth = {"Authorization": f"Bearer {tpm.json()['key']}"}
        streamed = await http.post(gateways[0] + "/v1/chat/completions", headers=tpm_auth,
                                   json={**CHAT, "max_tokens": 25, "stream": True,
                                         "stream_options": {"include_usage": True}})
        after = await http.post(gateways[1] + "/v1/chat/completions", headers=tpm_auth,
                                json={**CHAT, "max_tokens": 4})
    statuses = [answer.status_code for answer in answers]
    print(f"\nshared key limits: rpm {rpm}, 30 requests over 2 gateways: "
          f"{statuses.count(200)} x 200, {statuses.count(429)} x 429")
    assert sorted(statuses) == [200] * rpm + [429] * (30 - rpm)
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert [key["name"] for key in listed["data"]] == ["shared"]

    assert streamed.status_code == 200
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    usage = [chunk["usage"] for chunk in chunks if chunk.get("usage")][-1]
    assert usage["total_tokens"] > 20  # charged through gateway 0, spent for gateway 1
    assert after.status_code == 429
    assert "is limited to 20 tokens per minute" in after.json()["error"]["message"]
    assert 1 <= int(after.headers["retry-after"]) <= 61


async def test_a_redis_outage_under_load_fails_no_request(
        redis_server: RedisServer, start_sim, serve: Serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=5))
    gateways = [await serve(sim, redis_server.url) for _ in range(2)]
    statuses: list[int] = []
    stop = asyncio.Event()

    async with httpx.AsyncClient(timeout=30) as http:
        async def client(i: int) -> None:
            while not stop.is_set():
                url = gateways[i % 2]
                try:
                    response = await http.post(url + "/v1/chat/completions",
                                               json={**CHAT, "max_tokens": 5})
                    statuses.append(response.status_code)
                except httpx.TransportError:
                    statuses.append(0)

        clients = [asyncio.create_task(client(i)) for i in range(6)]
        try:
            await wait_until(lambda: _true(len(statuses) >= 20), "load before the outage")
            for url in gateways:
                assert await _redis_state(http, url) == (True, 1.0)

            redis_server.kill()
            killed = time.perf_counter()

            async def all_down() -> bool:
                return [await _redis_state(http, u) for u in gateways] == [(False, 0.0)] * 2

            await wait_until(all_down, "both gateways to report redis down")
            seen_down = time.perf_counter() - killed
            during = len(statuses)
            await wait_until(lambda: _true(len(statuses) >= during + 20), "load during the outage")

            redis_server.start()
            restarted = time.perf_counter()

            async def all_up() -> bool:
                return [await _redis_state(http, u) for u in gateways] == [(True, 1.0)] * 2

            await wait_until(all_up, "both gateways to report redis up again")
            recovered = time.perf_counter() - restarted
            after = len(statuses)
            await wait_until(lambda: _true(len(statuses) >= after + 20), "load after the outage")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        errors = (await http.get(gateways[0] + "/metrics")).text
    print(f"\nredis outage: {len(statuses)} requests ({during} before, "
          f"{after - during} during, {len(statuses) - after} after), "
          f"failed {sum(s != 200 for s in statuses)}; down seen in {seen_down:.2f} s, "
          f"recovery seen in {recovered:.2f} s")
    assert set(statuses) == {200}
    assert re.search(r'^sluice_redis_errors_total\{op="\w+"\} [1-9]', errors, re.MULTILINE)
    assert re.search(r'^sluice_redis_bypassed_total\{store="counters"\} [1-9]', errors,
                     re.MULTILINE)


async def _true(value: bool) -> bool:
    return value
