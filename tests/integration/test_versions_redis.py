"""Version policies shared through Redis: two real ``sluice serve`` processes on one
redis-server; a change made through one is applied by the other (measured)."""

from __future__ import annotations

import statistics
import time

import httpx

from simulator import SimConfig
from tests.integration.conftest import ServeGateway
from tests.integration.helpers import wait_until
from tests.integration.test_versions import ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY
from tests.redis_server import RedisServer

CHANGES = 20


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
