"""An engine started with ``--api-key`` (the simulator's, as vLLM's: ``/v1/...`` paths
need ``Authorization: Bearer <key>``) fronted by a gateway with the engine's ``api_key``:
generations, the model list, the realtime WebSocket and adapter loads carry the key; a
client's own ``Authorization`` is never passed on; the key reaches no log and no answer."""

from __future__ import annotations

import logging

import aiohttp
import httpx
import pytest

from gateway.config.settings import EngineConfig
from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import FAST_SIM, StartSim

ENGINE_KEY = "engine-secret-4f1d9c2ab7"
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
async def keyed_sim(start_sim: StartSim) -> str:
    return await start_sim(SimConfig(**{**FAST_SIM.model_dump(), "api_key": ENGINE_KEY}))


async def test_the_simulator_refuses_v1_paths_without_its_key(keyed_sim: str) -> None:
    async with httpx.AsyncClient(base_url=keyed_sim) as http:
        assert (await http.get("/health")).status_code == 200  # as vLLM: not guarded
        refused = await http.post("/v1/chat/completions", json=CHAT)
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        right = await http.get("/v1/models",
                               headers={"Authorization": f"Bearer {ENGINE_KEY}"})
    assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert wrong.status_code == 401
    assert right.status_code == 200


async def test_a_keyed_engine_is_answered_through_the_gateway(
        start_gateway: StartGateway, keyed_sim: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway([EngineConfig(
        name="e0", url=keyed_sim, api_key=ENGINE_KEY, headers={"X-Tenant": "blue"})])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        plain = await http.post("/v1/chat/completions", json=CHAT)
        streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        models = await http.get("/v1/models")
        ready = await http.get("/ready")
    assert plain.status_code == 200, plain.text
    assert plain.json()["usage"]["completion_tokens"] == 4
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert [m["id"] for m in models.json()["data"]] == ["sim-model"]
    assert ready.status_code == 200
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session.created"
    for text in (plain.text, streamed.text, models.text, ready.text, caplog.text):
        assert ENGINE_KEY not in text


async def test_without_the_key_the_engines_refusal_is_an_error_not_an_answer(
        start_gateway: StartGateway, keyed_sim: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """And a client's own Authorization (here: the engine's key itself) is not passed
    on: the gateway never forwards client credentials to an engine."""
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway([keyed_sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        answer = await http.post("/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": f"Bearer {ENGINE_KEY}"})
    assert answer.status_code >= 400
    assert "error" in answer.json()
    assert ENGINE_KEY not in answer.text
    assert ENGINE_KEY not in caplog.text
