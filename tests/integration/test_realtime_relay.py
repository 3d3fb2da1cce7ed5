"""``/v1/realtime``: vLLM's realtime WebSocket relayed through a real gateway to a
simulator engine's minimal realtime session (``simulator/realtime.py``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest

from simulator import SimConfig, SimServer
from tests.conftest import SimProcess, StartGateway
from tests.integration.conftest import FAST_SIM, StartSim
from tests.integration.helpers import metric, wait_until

KEY = "sk-realtime-test-key-0123456789"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=10)
    return message


async def sessions_on(sim: str) -> int:
    async with httpx.AsyncClient() as http:
        return int(metric((await http.get(sim + "/metrics")).text,
                          "vllm:websocket_connections_active"))


async def transcribe(ws: aiohttp.ClientWebSocketResponse, chunks: int) -> list[dict[str, Any]]:
    for _ in range(chunks):
        await ws.send_json({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(b"\x00\x01" * 160).decode()})
    await ws.send_json({"type": "input_audio_buffer.commit"})
    events = []
    while not events or events[-1]["type"] not in ("transcription.done", "error"):
        events.append(await receive(ws))
    return events


async def test_a_session_named_in_the_query_round_trips_and_closes_on_the_engine(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await receive(ws))["type"] == "session.created"
        assert await sessions_on(sim_server) == 1
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        events = await transcribe(ws, 2)
        assert [e["type"] for e in events] == ["transcription.delta"] * 2 + \
            ["transcription.done"]
        assert events[-1]["text"] == " chunk1 chunk2"
        assert events[-1]["usage"]["prompt_tokens"] == 320
        await ws.send_str("not json")  # the engine's own error passes through
        assert (await receive(ws))["code"] == "invalid_json"
        await ws.send_bytes(b"\x00")
        assert (await receive(ws))["code"] == "invalid_json"
    await wait_until(lambda: _no_sessions(sim_server), "the engine's socket to close")


async def _no_sessions(sim: str) -> bool:
    return await sessions_on(sim) == 0


async def test_without_a_query_the_first_session_update_names_the_model(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], api_keys=[KEY])
    async with client.ws_connect(gateway + "/v1/realtime",
                                 protocols=("sluice", f"bearer.{KEY}")) as ws:
        assert ws.protocol == "sluice"
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        assert (await receive(ws))["type"] == "session.created"
        events = await transcribe(ws, 1)
        assert events[-1]["text"] == " chunk1"


async def test_a_first_message_that_names_no_model_is_an_error_event_and_a_close(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    for first in ('{"type": "input_audio_buffer.commit"}', "garbage"):
        async with client.ws_connect(gateway + "/v1/realtime") as ws:
            await ws.send_str(first)
            event = await receive(ws)
            assert event["type"] == "error"
            assert event["code"] == "model_required"
            assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1008
    async with client.ws_connect(gateway + "/v1/realtime") as ws:
        await ws.send_json({"type": "session.update", "model": "nope"})
        assert (await receive(ws))["code"] == "model_not_found"
        assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
    assert await sessions_on(sim_server) == 0


async def test_handshake_refusals_are_http_errors(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], api_keys=[KEY])
    auth = {"Authorization": f"Bearer {KEY}"}
    for url, headers, status in ((gateway + "/v1/realtime?model=sim-model", {}, 401),
                                 (gateway + "/v1/realtime?model=nope", auth, 404)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(url, headers=headers)
        assert caught.value.status == status


async def test_an_engine_that_shuts_down_closes_the_client_with_its_code(
        start_gateway: StartGateway, client: aiohttp.ClientSession) -> None:
    engine = SimServer(FAST_SIM)
    await engine.start()
    try:
        gateway = await start_gateway([engine.base_url])
        async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
            assert (await receive(ws))["type"] == "session.created"
            await engine.close()
            assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1012  # the engine's own (service restart)
    finally:
        await engine.close()


async def test_an_engine_that_dies_closes_the_client_with_1014(
        start_gateway: StartGateway, spawn_sim: Callable[..., Awaitable[SimProcess]],
        client: aiohttp.ClientSession) -> None:
    engine = await spawn_sim()
    gateway = await start_gateway([engine.url])
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await receive(ws))["type"] == "session.created"
        engine.kill()
        assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1014  # bad gateway: the engine's socket failed


async def test_sessions_past_the_limit_are_refused(
        start_gateway: StartGateway, start_sim: StartSim,
        client: aiohttp.ClientSession) -> None:
    sim = await start_sim(SimConfig())
    gateway = await start_gateway([sim], websocket={"max_realtime_sessions": 1})
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await receive(ws))["type"] == "session.created"
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(gateway + "/v1/realtime?model=sim-model")
        assert caught.value.status == 429
    await wait_until(lambda: _no_sessions(sim), "the engine's socket to close")
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await receive(ws))["type"] == "session.created"


ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2


async def _managed_key(gateway: str, **spec: object) -> str:
    async with httpx.AsyncClient(base_url=gateway) as http:
        created = await http.post("/admin/keys", json={"name": "rt", **spec},
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


async def test_a_keys_requests_per_minute_count_realtime_sessions(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], admin={"token": ADMIN_TOKEN})
    key = await _managed_key(gateway, rpm=2)
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        async with client.ws_connect(gateway + "/v1/realtime?model=sim-model",
                                     headers=auth) as ws:
            assert (await receive(ws))["type"] == "session.created"
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(gateway + "/v1/realtime?model=sim-model", headers=auth)
    assert caught.value.status == 429
    assert caught.value.headers is not None
    assert "Retry-After" in caught.value.headers
    # Without ?model= the handshake is answered first: the refusal is an error event.
    async with client.ws_connect(gateway + "/v1/realtime", headers=auth) as ws:
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        event = await receive(ws)
        assert (event["type"], event["code"]) == ("error", "rate_limit_exceeded")
        assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1013  # try again later
    assert await sessions_on(sim_server) == 0


async def test_a_session_is_charged_the_tokens_the_engine_reports(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], admin={"token": ADMIN_TOKEN})
    key = await _managed_key(gateway, tpm=100)
    auth = {"Authorization": f"Bearer {key}"}
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model",
                                 headers=auth) as ws:
        assert (await receive(ws))["type"] == "session.created"
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        usage = (await transcribe(ws, 1))[-1]["usage"]
    reported = usage["prompt_tokens"] + usage["completion_tokens"]
    assert reported > 100
    async with httpx.AsyncClient(base_url=gateway, headers=auth) as http:
        await wait_until(lambda: _session_counted(http), "the session's end to be counted")
        charged = metric((await http.get("/metrics")).text, "sluice_key_tokens_total{")
        after = await http.post("/v1/completions",
                                json={"model": "sim-model", "prompt": "hi", "max_tokens": 1})
    assert charged == reported
    assert after.status_code == 429
    assert after.json()["error"]["code"] == "rate_limit_exceeded"


async def _session_counted(http: httpx.AsyncClient) -> bool:
    page = (await http.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("sluice_requests_total{")
               and 'endpoint="realtime"' in line) == 1


async def test_a_draining_gateway_refuses_a_new_session(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession,
        gateway_apps: dict[str, Any]) -> None:
    gateway = await start_gateway([sim_server])
    gateway_apps[gateway].state.drain.begin()
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(gateway + "/v1/realtime?model=sim-model")
    assert caught.value.status == 503
    async with client.ws_connect(gateway + "/v1/realtime") as ws:
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        event = await receive(ws)
        assert (event["type"], event["code"]) == ("error", "shutting_down")
    assert await sessions_on(sim_server) == 0


async def test_sessions_hold_the_models_admission_slots(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], admission={"max_in_flight_per_engine": 2})
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as first, \
            client.ws_connect(gateway + "/v1/realtime?model=sim-model") as second:
        for ws in (first, second):
            assert (await receive(ws))["type"] == "session.created"
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(gateway + "/v1/realtime?model=sim-model")
        assert caught.value.status == 429
    async with client.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await receive(ws))["type"] == "session.created"
