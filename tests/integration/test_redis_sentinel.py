"""``redis+sentinel://``: two ``sluice serve`` processes on a real replica set (one
primary, one replica, three sentinels, quorum 2) in front of a simulator. A managed key
and a version policy are written, requests run continuously, the primary is SIGKILLed;
the sentinels promote the replica, serving goes on, the key and the policy are still
there, and writes after the failover reach the new primary (and the other gateway
through pub/sub). Timings are printed (``-s``)."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.integration.conftest import ServeGateway, StartSim
from tests.integration.helpers import gateway_metric, wait_until
from tests.redis_sentinel import SentinelSet

ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SETTINGS = {
    "admin": {"token": ADMIN_TOKEN},
    "redis": {"probe_interval_s": 0.25},
    "versions": {"reconcile_s": 60,  # long: a change must arrive through pub/sub
                 "aliases": {"chat": {"versions": {"v1": {"model": "sim-model"},
                                                   "v2": {"model": "sim-model"}},
                                      "weights": {"v1": 100}}}},
}


async def test_serving_goes_on_across_a_primary_failover(
        redis_sentinels: SentinelSet, start_sim: StartSim,
        serve_gateway: ServeGateway) -> None:
    sim = await start_sim()
    first, second = [await serve_gateway([sim], redis_sentinels.url, **SETTINGS)
                     for _ in range(2)]
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as admin:
        put = await admin.put(first + "/admin/versions/chat",
                              json={"weights": {"v1": 70, "v2": 30}})
        created = await admin.post(first + "/admin/keys", json={"name": "failover"})
    assert put.status_code == 200, put.text
    assert created.status_code == 201, created.text
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    # Replication is asynchronous: what the primary acknowledged but had not yet sent
    # is lost with it. WAIT makes this test's writes durable on the replica.
    assert await asyncio.to_thread(redis_sentinels.replicate) == 1

    outcomes: list[tuple[float, int]] = []
    refusals: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def load(url: str) -> None:
        async with httpx.AsyncClient(timeout=10, headers=key) as http:
            while not stop.is_set():
                try:
                    answer = await http.post(url + "/v1/chat/completions", json=BODY)
                except httpx.TransportError:
                    outcomes.append((time.monotonic(), 0))
                    continue
                outcomes.append((time.monotonic(), answer.status_code))
                if answer.status_code != 200:
                    refusals.append((time.monotonic(), answer.text[:200]))

    loaders = [asyncio.create_task(load(url)) for url in (first, second) for _ in range(2)]
    try:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        old = await asyncio.to_thread(redis_sentinels.kill_primary)
        new = await asyncio.to_thread(redis_sentinels.wait_promoted, old)
        promoted_at = time.monotonic()
        async with httpx.AsyncClient(timeout=5, headers=key) as http:
            for url in (first, second):
                await wait_until(lambda u=url: _redis_up(http, u),  # type: ignore[misc]
                                 "the gateway to reach the new primary", timeout_s=30)
        recovered_at = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    during = [s for t, s in outcomes if killed_at <= t <= recovered_at]
    after = [s for t, s in outcomes if t > recovered_at]
    failed = [s for s in during if s != 200]
    print(f"\nprimary {old} killed; replica {new} promoted after "
          f"{promoted_at - killed_at:.2f} s; both gateways on it after "
          f"{recovered_at - killed_at:.2f} s; {len(during)} requests in that window, "
          f"{len(failed)} failed {sorted(set(failed))}; {len(after)} after, "
          f"{sum(s != 200 for s in after)} failed")
    for text in sorted({text for _, text in refusals}):
        print(f"  {sum(t == text for _, t in refusals)} x {text}")
    assert new != old
    assert during, "no request ran during the failover"
    # Admission fails open, a key seen before authenticates from its last read record,
    # the cache is skipped: what may fail inside the window is a 503 (a store call on a
    # connection to the dying primary; a key the replica's outage cache does not hold),
    # never another error, and nothing once the gateways are on the new primary.
    assert set(failed) <= {503}
    assert after
    assert set(after) == {200}

    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as admin:
        shown = (await admin.get(second + "/admin/versions/chat")).json()
        keys = (await admin.get(second + "/admin/keys")).json()
        later = await admin.put(first + "/admin/versions/chat",
                                json={"weights": {"v1": 50, "v2": 50}})
        assert later.status_code == 200, later.text
        await wait_until(lambda: _weights(admin, second, {"v1": 50, "v2": 50}),
                         "a change after the failover to reach the other gateway",
                         timeout_s=10)
        fresh = await admin.post(second + "/admin/keys", json={"name": "after"})
    assert shown["applied"]["weights"] == {"v1": 70, "v2": 30}
    assert created.json()["id"] in [k["id"] for k in keys["data"]]
    assert fresh.status_code == 201
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(first + "/v1/chat/completions", json=BODY, headers={
            "Authorization": f"Bearer {fresh.json()['key']}"})
    assert answer.status_code == 200, answer.text


async def _redis_up(http: httpx.AsyncClient, url: str) -> bool:
    return await gateway_metric(http, url, "sluice_redis_up") == 1


async def _weights(http: httpx.AsyncClient, url: str, weights: dict[str, float]) -> bool:
    shown = (await http.get(url + "/admin/versions/chat")).json()
    return bool(shown["applied"]["weights"] == weights)
