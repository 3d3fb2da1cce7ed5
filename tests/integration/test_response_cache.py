"""The response cache through a real gateway and a simulator: a repeated deterministic
request answered without an engine call, a streamed replay the official ``openai``
client accepts, ``Cache-Control: no-store``, one key space per API key, and identical
requests in flight sharing one upstream call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
from openai import AsyncOpenAI

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import events_of, metric, sim_received

FAST = SimConfig(decode_step_ms=1, prefill_base_ms=1)
SLOW = SimConfig(decode_step_ms=20, prefill_base_ms=50)
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6, "temperature": 0}
KEY_1, KEY_2 = "sk-test-one-0123456789", "sk-test-two-0123456789"


async def post(http: httpx.AsyncClient, body: dict[str, Any], key: str | None = None,
               **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    response = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_a_repeated_request_is_answered_without_an_engine_call(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        first = await post(http, CHAT)
        called = await sim_received(http, sim)
        second = await post(http, CHAT)
        assert await sim_received(http, sim) == called == 1
        assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == (
            "miss", "hit")
        assert second.json() == first.json()
        sampled = await post(http, {**CHAT, "temperature": 0.7})
        assert sampled.headers["x-sluice-cache"] == "bypass"
        page = (await http.get("/metrics")).text
    assert metric(page, 'sluice_cache_lookups_total{model="sim-model",result="hit",'
                        'version="none"}') == 1


async def test_with_the_cache_off_every_request_reaches_the_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], cache={"enabled": False})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        answers = [await post(http, CHAT) for _ in range(2)]
        assert await sim_received(http, sim) == 2
    assert [a.headers["x-sluice-cache"] for a in answers] == ["bypass", "bypass"]


async def test_a_streamed_hit_is_valid_sse_the_openai_client_reads(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    body = {**CHAT, "stream": True}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        live = await post(http, body)
        replay = await post(http, body)
        assert replay.headers["x-sluice-cache"] == "hit"
        assert replay.headers["content-type"].startswith("text/event-stream")
        assert events_of(replay.content) == events_of(live.content)
        assert events_of(replay.content)[-1] == "data: [DONE]"
        assert await sim_received(http, sim) == 1
    api = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    async with api:
        text, usage = "", None
        stream = await api.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            temperature=0, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
    assert text == "".join(
        json.loads(event[6:])["choices"][0]["delta"].get("content") or ""
        for event in events_of(live.content)[:-1])
    assert usage is not None
    assert usage.completion_tokens == 6
    async with httpx.AsyncClient() as http:
        assert await sim_received(http, sim) == 1  # the client's stream was a hit too


async def test_no_store_is_honoured(start_sim: StartSim,
                                    start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        for _ in range(2):
            response = await post(http, CHAT, **{"cache-control": "no-store"})
            assert response.headers["x-sluice-cache"] == "bypass"
        assert (await post(http, CHAT)).headers["x-sluice-cache"] == "miss"
        fresh = await post(http, CHAT, **{"cache-control": "no-cache"})
        assert fresh.headers["x-sluice-cache"] == "miss"
        assert (await post(http, CHAT)).headers["x-sluice-cache"] == "hit"
        assert await sim_received(http, sim) == 4


async def test_one_keys_answers_are_not_served_to_another(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    apart = await start_gateway([sim], api_keys=[KEY_1, KEY_2])
    shared = await start_gateway([sim], api_keys=[KEY_1, KEY_2],
                                 cache={"shared_across_keys": True})
    for gateway, second in ((apart, "miss"), (shared, "hit")):
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            assert (await post(http, CHAT, KEY_1)).headers["x-sluice-cache"] == "miss"
            assert (await post(http, CHAT, KEY_1)).headers["x-sluice-cache"] == "hit"
            assert (await post(http, CHAT, KEY_2)).headers["x-sluice-cache"] == second


async def test_identical_requests_in_flight_make_one_upstream_call(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(SLOW)
    gateway = await start_gateway([sim])
    body = {**CHAT, "stream": True}
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        answers = await asyncio.gather(*(post(http, body) for _ in range(20)))
        assert await sim_received(http, sim) == 1
    results = sorted(response.headers["x-sluice-cache"] for response in answers)
    assert results == ["coalesced"] * 19 + ["miss"]
    assert all(events_of(a.content) == events_of(answers[0].content) for a in answers)


async def test_a_websocket_requests_done_says_what_the_cache_did(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    done = []
    async with aiohttp.ClientSession() as session, session.ws_connect(
            gateway + "/v1/ws") as ws:
        for request_id in ("a", "b"):
            await ws.send_json({"id": request_id, "type": "chat.completions", "body": CHAT})
            while (message := await ws.receive_json(timeout=10))["type"] == "chunk":
                pass
            done.append(message)
    assert [m["cache"] for m in done] == ["miss", "hit"]
    async with httpx.AsyncClient() as http:
        assert await sim_received(http, sim) == 1
