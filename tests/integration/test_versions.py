"""Model versions through a real gateway and simulators: sticky callers, pins, the
fallback chain, and the admin API (auth, set, rollback, history, an atomic blue/green
flip under load). The canary split over real requests is in ``test_versions_redis.py``
(5,000 requests through two gateways)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from simulator import SimConfig
from tests.integration.helpers import wait_until

ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATIC_KEY = "sk-static-0123456789abcdef"
KEY = {"Authorization": f"Bearer {STATIC_KEY}"}
MODELS = {"v1": "sim-a", "v2": "sim-b"}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def versions(weights: dict[str, float], **alias: Any) -> dict[str, Any]:
    return {"aliases": {"chat": {
        "versions": {name: {"model": model} for name, model in MODELS.items()},
        "weights": weights, **alias}}}


async def two_version_gateway(start_sim, start_gateway, weights: dict[str, float],
                              alias: dict[str, Any] | None = None, **overrides: Any) -> str:
    sims = [await start_sim(SimConfig(model=model, prefill_base_ms=1, decode_step_ms=1))
            for model in MODELS.values()]
    return await start_gateway(sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
                               versions=versions(weights, **(alias or {})), **overrides)


async def ask(http: httpx.AsyncClient, **headers: str) -> tuple[str, str]:
    """One request: the version header and the model that answered."""
    response = await http.post("/v1/chat/completions", json=BODY,
                               headers={**KEY, **headers})
    assert response.status_code == 200, response.text
    return response.headers["x-sluice-version"], response.json()["model"]


async def test_sticky_sessions_and_pins(start_sim, start_gateway) -> None:
    gateway = await two_version_gateway(start_sim, start_gateway, {"v1": 50, "v2": 50},
                                        {"sticky": True})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        seen: dict[str, set[str]] = {}
        for session in range(40):
            for _ in range(3):
                version, _ = await ask(http, **{"x-session-id": f"s-{session}"})
                seen.setdefault(f"s-{session}", set()).add(version)
        pinned = [await ask(http, **{"x-sluice-version": "v2"}) for _ in range(10)]
        unknown = await http.post("/v1/chat/completions", json=BODY,
                                  headers={**KEY, "x-sluice-version": "v9"})
    assert all(len(v) == 1 for v in seen.values())
    assert {v for s in seen.values() for v in s} == {"v1", "v2"}
    assert set(pinned) == {("v2", "sim-b")}
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_version"


async def test_the_fallback_chain_answers_when_a_version_is_down(
        start_sim, start_gateway, spawn_sim) -> None:
    first = await start_sim(SimConfig(model="sim-a", prefill_base_ms=1, decode_step_ms=1))
    second = await spawn_sim("--model", "sim-b", "--decode-step-ms", "1")
    gateway = await start_gateway(
        [first, second.url], versions=versions({"v2": 1}, fallback=["v2", "v1"]))
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        before = await http.post("/v1/chat/completions", json=BODY)
        second.kill()

        async def down() -> bool:
            ready = (await http.get("/ready")).json()
            return not next(e for e in ready["engines"] if e["name"] == "e1")["healthy"]

        await wait_until(down, "the engine of v2 to be seen down")
        after = await http.post("/v1/chat/completions", json=BODY)
    assert before.headers["x-sluice-version"] == "v2"
    assert "x-sluice-fallback-from" not in before.headers
    assert after.status_code == 200, after.text
    assert after.headers["x-sluice-version"] == "v1"
    assert after.headers["x-sluice-fallback-from"] == "v2"
    assert after.json()["model"] == "sim-a"


async def test_the_admin_api_needs_its_token(start_sim, start_gateway) -> None:
    gateway = await two_version_gateway(start_sim, start_gateway, {"v1": 1})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        calls = [("GET", "/admin/versions"), ("GET", "/admin/versions/chat"),
                 ("PUT", "/admin/versions/chat"), ("GET", "/admin/versions/chat/history"),
                 ("POST", "/admin/versions/chat/rollback")]
        for method, path in calls:
            for headers in ({}, {"Authorization": f"Bearer {STATIC_KEY}"},
                            {"Authorization": "Bearer " + "x" * 40}):
                response = await http.request(method, path, headers=headers,
                                              json={"weights": {"v2": 1}})
                assert response.status_code == 401, (method, path, headers)
            # the right token clears the address's failures (5 in a row are backed off)
            assert (await http.get("/admin/versions", headers=ADMIN)).status_code == 200
        shown = (await http.get("/admin/versions/chat", headers=ADMIN)).json()
    assert shown["policy"]["weights"] == {"v1": 1}


async def test_set_rollback_and_history(start_sim, start_gateway) -> None:
    gateway = await two_version_gateway(start_sim, start_gateway, {"v1": 90, "v2": 10})
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=ADMIN) as http:
        listed = (await http.get("/admin/versions")).json()
        set_to = await http.put("/admin/versions/chat", json={"weights": {"v1": 50, "v2": 50}})
        history = (await http.get("/admin/versions/chat/history")).json()
        rolled = await http.post("/admin/versions/chat/rollback")
        again = await http.post("/admin/versions/chat/rollback")
        bad = await http.put("/admin/versions/chat", json={"weights": {"v9": 1}})
        missing = await http.get("/admin/versions/nope")
        shares = Counter([(await ask(http))[0] for _ in range(200)])
    assert [a["alias"] for a in listed["data"]] == ["chat"]
    assert set_to.status_code == 200
    assert set_to.json()["policy"]["weights"] == {"v1": 50, "v2": 50}
    assert set_to.json()["applied"] == set_to.json()["policy"]
    assert [p["weights"] for p in history["data"]] == [{"v1": 90, "v2": 10}]
    assert rolled.json()["applied"]["weights"] == {"v1": 90, "v2": 10}
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "no_earlier_policy"
    assert bad.status_code == 400
    assert missing.status_code == 404
    assert 5 <= shares["v2"] <= 40  # back to the 10 % split


async def test_a_blue_green_flip_is_atomic_under_load(start_sim, start_gateway) -> None:
    gateway = await two_version_gateway(start_sim, start_gateway, {"v1": 1})
    results: list[tuple[float, float, str, str]] = []
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            sent = time.perf_counter()
            version, model = await ask(http)
            results.append((sent, time.perf_counter(), version, model))

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        clients = [asyncio.create_task(client(http)) for _ in range(8)]
        await asyncio.sleep(0.3)
        flip_start = time.perf_counter()
        flipped = await http.put("/admin/versions/chat", headers=ADMIN,
                                 json={"weights": {"v2": 1}})
        flip_end = time.perf_counter()
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
    assert flipped.status_code == 200
    assert all(MODELS[version] == model for _, _, version, model in results)
    before = [v for _, done, v, _ in results if done < flip_start]
    after = [v for sent, _, v, _ in results if sent > flip_end]
    assert before
    assert set(before) == {"v1"}
    assert after
    assert set(after) == {"v2"}
    during = len(results) - len(before) - len(after)
    print(f"flip: {len(results)} requests, {len(before)} before, {during} during, "
          f"{len(after)} after")
