"""Version policies shared through Redis: two real ``sluice serve`` processes on one
redis-server; a change made through one is applied by the other (measured), and a 10 %
canary over 5,000 real requests spread over both lands at 10 % ± 1.5 %."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter

import aiohttp
import httpx

from simulator import SimConfig
from tests.integration.conftest import ServeGateway
from tests.integration.helpers import gateway_metric, sim_received, wait_until
from tests.integration.test_versions import ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY
from tests.redis_server import RedisServer

CHANGES = 20
CANARY_REQUESTS = 5000


async def test_a_canary_set_through_one_gateway_is_applied_by_the_other(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway) -> None:
    sims = [await start_sim(SimConfig(model=model)) for model in MODELS.values()]
    settings = {"admin": {"token": ADMIN_TOKEN}, "api_keys": [STATIC_KEY], "versions": {
        "reconcile_s": 30,  # long: what is measured is the notification
        "aliases": {"chat": {"versions": {n: {"model": m} for n, m in MODELS.items()},
                             "weights": {"v1": 100}}}}}
    first, second = [await serve_gateway(sims, redis_server.url, **settings)
                     for _ in range(2)]
    delays: list[float] = []
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(timeout=10, headers=admin) as http:
        for n in range(CHANGES):
            weights = {"v1": 100 - (n + 1), "v2": n + 1}
            sent = time.perf_counter()
            response = await http.put(first + "/admin/versions/chat", json={"weights": weights})
            assert response.status_code == 200, response.text
            while True:
                shown = (await http.get(second + "/admin/versions/chat")).json()
                if shown["applied"]["weights"] == weights:
                    break
                assert time.perf_counter() - sent < 10, "the change never arrived"
            delays.append(time.perf_counter() - sent)
        history = (await http.get(second + "/admin/versions/chat/history")).json()["data"]
        rolled = (await http.post(second + "/admin/versions/chat/rollback")).json()
        await wait_until(lambda: _applied(http, first, rolled["policy"]["weights"]),
                         "the rollback to reach the first gateway", timeout_s=10)
        served = [(await http.post(first + "/v1/chat/completions", json=BODY, headers={
            **KEY, "x-request-id": f"redis-{n}"})).headers["x-sluice-version"]
            for n in range(300)]
    print(f"\npropagation over {CHANGES} changes (PUT on one gateway to applied on the "
          f"other, polled): median {statistics.median(delays) * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms")
    assert history[0]["weights"] == {"v1": 100 - (CHANGES - 1), "v2": CHANGES - 1}
    assert rolled["applied"]["weights"] == history[0]["weights"]
    share = served.count("v2") / len(served)
    print(f"after the rollback through the second gateway, the first serves v2 to "
          f"{share:.1%} of 300 requests (policy {CHANGES - 1} %)")
    assert abs(share - (CHANGES - 1) / 100) <= 0.05


async def _applied(http: httpx.AsyncClient, url: str, weights: dict[str, float]) -> bool:
    shown = (await http.get(url + "/admin/versions/chat")).json()
    return bool(shown["applied"]["weights"] == weights)


async def test_a_ten_percent_canary_over_5000_requests_through_two_gateways(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway) -> None:
    """Each request has an id of its own (the canary's split is a hash of it), the same
    on every run; they alternate between the gateways, 32 at a time. The client is
    aiohttp's: httpx took about 4 ms of CPU per request here (aiohttp 0.5 ms), which on
    two cores made this test three times as long."""
    sims = [await start_sim(SimConfig(model=model, prefill_base_ms=0, decode_step_ms=0))
            for model in MODELS.values()]
    settings = {"api_keys": [STATIC_KEY], "versions": {"aliases": {"chat": {
        "versions": {n: {"model": m} for n, m in MODELS.items()},
        "weights": {"v1": 90, "v2": 10}}}}}
    gateways = [await serve_gateway(sims, redis_server.url, **settings) for _ in range(2)]
    limit = asyncio.Semaphore(32)

    async def one(http: aiohttp.ClientSession, n: int) -> tuple[str, str]:
        async with limit, http.post(gateways[n % 2] + "/v1/chat/completions", json=BODY,
                                    headers={"x-request-id": f"canary-{n}"}) as response:
            answer = await response.json()
            assert response.status == 200, answer
            return response.headers["x-sluice-version"], answer["model"]

    began = time.perf_counter()
    async with aiohttp.ClientSession(headers=KEY,
                                     connector=aiohttp.TCPConnector(limit=32)) as http:
        answers = await asyncio.gather(*(one(http, n) for n in range(CANARY_REQUESTS)))
    took = time.perf_counter() - began
    async with httpx.AsyncClient(timeout=10, headers=KEY) as http:
        received = [await sim_received(http, sim) for sim in sims]
        requests, tokens = [], []
        for gateway in gateways:
            requests.append(await gateway_metric(
                http, gateway, 'sluice_requests_total{endpoint="chat",engine="e1",'
                               'model="chat",status="200",version="v2"}'))
            tokens.append(await gateway_metric(
                http, gateway, 'sluice_tokens_total{kind="completion",model="chat",'
                               'version="v2"}'))
    versions = Counter(version for version, _ in answers)
    share = versions["v2"] / CANARY_REQUESTS
    print(f"\ncanary share over {CANARY_REQUESTS} requests through two gateways: "
          f"{share:.2%} ({took:.1f} s for the requests, 32 at a time)")
    assert all(MODELS[version] == model for version, model in answers)
    assert abs(share - 0.10) <= 0.015, share
    assert received == [versions["v1"], versions["v2"]]  # what each engine took
    assert sum(requests) == versions["v2"]  # counted under the version label
    assert all(count > 0 for count in requests)  # both gateways served the canary
    assert tokens == requests  # one token each (max_tokens 1), under the same labels
