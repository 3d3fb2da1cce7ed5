"""An engine whose ``/v1/models`` answer is malformed: the gateway starts anyway and
reports that engine unhealthy; at run time the health loop survives it, the other
engine keeps serving, and the engine is back once its answer is fixed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine
from tests.integration.fake_engine import chat_chunk, send_events
from tests.integration.helpers import wait_until

MALFORMED = [b"{oops", b'[{"id": "sim-model", "object": "model"}]', b'{"data": {}}']
CHAT = {"model": "sim-model", "max_tokens": 2, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}


async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await send_events(request, [chat_chunk("c", "Hi", finish_reason="stop"),
                                       b"data: [DONE]\n\n"])


async def engines_seen(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in (await http.get("/ready")).json()["engines"]}


async def serves(http: httpx.AsyncClient, count: int) -> list[int]:
    return [(await http.post("/v1/chat/completions", json=CHAT)).status_code
            for _ in range(count)]


@pytest.mark.parametrize("models", MALFORMED)
async def test_a_malformed_model_list_at_start_leaves_that_engine_unhealthy(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        models: bytes) -> None:
    bad, good = await start_fake_engine(answer), await start_fake_engine(answer)
    bad.models_body = models
    gateway = await start_gateway([bad.url, good.url], routing={"default": {
        "strategy": "round_robin"}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        ready = await http.get("/ready")
        statuses = await serves(http, 4)
        engines = await engines_seen(http)
    assert ready.status_code == 200
    assert (engines["e0"]["healthy"], engines["e1"]["healthy"]) == (False, True)
    assert statuses == [200] * 4
    assert (len(bad.received), len(good.received)) == (0, 4)


async def test_a_gateway_whose_only_engine_lists_garbage_starts_not_ready(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    engine = await start_fake_engine(answer)
    engine.models_body = b"{oops"
    gateway = await start_gateway([engine.url])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        ready = await http.get("/ready")
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert ready.status_code == 503
    assert ready.json()["engines"][0]["healthy"] is False
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_engine"


async def test_the_health_loop_survives_malformed_model_lists_at_run_time(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    flaky, steady = await start_fake_engine(answer), await start_fake_engine(answer)
    gateway = await start_gateway([flaky.url, steady.url], health_interval_s=0.05,
                                  routing={"default": {"strategy": "round_robin"}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        async def flaky_is(healthy: bool) -> bool:
            return bool((await engines_seen(http))["e0"]["healthy"] is healthy)

        async def flaky_up() -> bool:
            return await flaky_is(True)

        async def flaky_down() -> bool:
            return await flaky_is(False)

        await wait_until(flaky_up, "both engines to be up")
        for models in MALFORMED:
            flaky.models_body = models
            await wait_until(flaky_down, f"e0 to be unhealthy with {models!r}")
            before = len(flaky.received)
            assert await serves(http, 3) == [200] * 3
            assert len(flaky.received) == before
            flaky.models_body = None
            await wait_until(flaky_up, "e0 to be back with a good model list")
        served_by_flaky = len(flaky.received)
        assert await serves(http, 4) == [200] * 4
    assert len(flaky.received) > served_by_flaky  # back in the rotation

