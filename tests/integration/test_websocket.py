"""``/v1/ws``: multiplexed generation requests over one WebSocket, through a real gateway
on a socket in front of simulator engines, driven by aiohttp's WebSocket client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import metric, wait_until

KEY = "sk-websocket-test-key-0123456789"
SLOW_SIM = SimConfig(prefill_base_ms=2.0, decode_step_ms=20.0)
"""Slow enough that a request is still running when the test acts on it."""


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Hello"}], **extra}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=10)
    return message


async def until_terminal(ws: aiohttp.ClientWebSocketResponse, ids: set[str]
                         ) -> list[dict[str, Any]]:
    """Every message until each of ``ids`` has had its done, error or cancelled."""
    messages, open_ids = [], set(ids)
    while open_ids:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("done", "error", "cancelled"):
            open_ids.discard(message["id"])
    return messages


async def running(sim: str) -> int:
    async with httpx.AsyncClient() as http:
        return int(metric((await http.get(sim + "/metrics")).text,
                          "vllm:num_requests_running"))


async def test_two_requests_stream_interleaved_on_one_socket(
        start_gateway: StartGateway, start_sim: StartSim,
        client: aiohttp.ClientSession) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=5.0))
    gateway = await start_gateway([sim])
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        await ws.send_json({"id": "a", "type": "chat.completions", "body": chat(12)})
        await ws.send_json({"id": "b", "type": "completions",
                            "body": {"model": "sim-model", "prompt": "Hi", "max_tokens": 12,
                                     "stream": False}})
        messages = await until_terminal(ws, {"a", "b"})
    order = [m["id"] for m in messages if m["type"] == "chunk"]
    first_b, last_a = order.index("b"), len(order) - 1 - order[::-1].index("a")
    assert first_b < last_a, f"not interleaved: {order}"
    for request_id, kind in (("a", "chat.completion.chunk"), ("b", "text_completion")):
        chunks = [m["data"] for m in messages if m["id"] == request_id and m["type"] == "chunk"]
        assert all(c["object"] == kind for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all(c["choices"] for c in chunks)  # no usage chunk: not asked for
        done = [m for m in messages if m["id"] == request_id and m["type"] != "chunk"]
        assert done == [{"id": request_id, "type": "done",
                         "usage": {"prompt_tokens": done[0]["usage"]["prompt_tokens"],
                                   "completion_tokens": 12,
                                   "total_tokens": done[0]["usage"]["total_tokens"]}}]


async def test_the_usage_chunk_comes_when_asked_for(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        body = chat(3, stream_options={"include_usage": True})
        await ws.send_json({"id": "u", "type": "chat.completions", "body": body})
        messages = await until_terminal(ws, {"u"})
    assert messages[-2]["data"]["choices"] == []
    assert messages[-2]["data"]["usage"]["completion_tokens"] == 3
    assert messages[-1]["type"] == "done"


async def test_cancel_aborts_the_request_on_the_engine(
        start_gateway: StartGateway, start_sim: StartSim,
        client: aiohttp.ClientSession) -> None:
    sim = await start_sim(SLOW_SIM)
    gateway = await start_gateway([sim])
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        await ws.send_json({"id": "long", "type": "chat.completions", "body": chat(2000)})
        assert (await receive(ws))["type"] == "chunk"
        assert await running(sim) == 1
        await ws.send_json({"id": "long", "type": "cancel"})
        while (message := await receive(ws))["type"] == "chunk":
            pass
        assert message == {"id": "long", "type": "cancelled"}
        await wait_until(lambda: _none_running(sim), "the engine to abort the request")
        # the socket goes on: the same id may be used again once it has ended
        await ws.send_json({"id": "long", "type": "chat.completions", "body": chat(2)})
        assert (await until_terminal(ws, {"long"}))[-1]["type"] == "done"
        # a cancel for a request that is not running is a no-op
        await ws.send_json({"id": "long", "type": "cancel"})
        await ws.send_json({"id": "next", "type": "chat.completions", "body": chat(1)})
        after = await until_terminal(ws, {"next"})
        assert {m["id"] for m in after} == {"next"}
        assert after[-1]["type"] == "done"


async def _none_running(sim: str) -> bool:
    return await running(sim) == 0


async def test_closing_the_socket_aborts_every_request_in_flight(
        start_gateway: StartGateway, start_sim: StartSim,
        client: aiohttp.ClientSession) -> None:
    sim = await start_sim(SLOW_SIM)
    gateway = await start_gateway([sim])
    ws = await client.ws_connect(gateway + "/v1/ws")
    for request_id in ("x", "y", "z"):
        await ws.send_json({"id": request_id, "type": "chat.completions", "body": chat(2000)})
    seen: set[str] = set()
    while len(seen) < 3:
        seen.add((await receive(ws))["id"])
    assert await running(sim) == 3
    await ws.close()
    await wait_until(lambda: _none_running(sim), "the engine to abort all three")
    async with httpx.AsyncClient() as http:
        page = (await http.get(gateway + "/metrics")).text
    assert metric(page, 'sluice_requests_total{endpoint="chat",engine="e0",'
                        'model="sim-model",status="499",version="none"}') == 3


async def test_bad_frames_get_errors_and_the_socket_stays_usable(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        frames: list[tuple[str | bytes, str | None, str]] = [
            ("not json", None, "invalid_message"),
            ("[1, 2]", None, "invalid_message"),
            (b"\x00\x01", None, "binary_message"),
            ('{"type": "chat.completions", "body": {}}', None, "invalid_message"),
            ('{"id": 7, "type": "chat.completions", "body": {}}', None, "invalid_message"),
            ('{"id": "q", "type": "embeddings", "body": {}}', None, "unknown_type"),
            ('{"id": "q", "type": "chat.completions"}', "q", "invalid_message"),
            ('{"id": "q", "type": "chat.completions", "body": []}', "q", "invalid_message"),
        ]
        for frame, tagged, code in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            message = await receive(ws)
            assert message["type"] == "error", (frame, message)
            assert message["id"] == tagged, (frame, message)
            assert message["error"]["code"] == code, (frame, message)
            assert message["error"]["type"] == "invalid_request_error"
        # a body the pipeline refuses ends that request with its OpenAI error
        await ws.send_json({"id": "v", "type": "chat.completions",
                            "body": {"model": "sim-model", "messages": []}})
        refused = await receive(ws)
        assert refused["id"] == "v"
        assert refused["error"]["param"] == "messages"
        await ws.send_json({"id": "m", "type": "chat.completions",
                            "body": {**chat(2), "model": "nope"}})
        assert (await receive(ws))["error"]["code"] == "model_not_found"
        # a second request under an id still in flight is refused, untagged
        await ws.send_json({"id": "d", "type": "chat.completions", "body": chat(200)})
        await ws.send_json({"id": "d", "type": "chat.completions", "body": chat(2)})
        messages = await until_terminal(ws, {"d"})
        duplicate = [m for m in messages if m["id"] is None]
        assert [m["error"]["code"] for m in duplicate] == ["duplicate_id"]
        assert messages[-1] == {"id": "d", "type": "done", "usage": messages[-1]["usage"]}
        assert messages[-1]["usage"]["completion_tokens"] == 200


async def test_a_message_over_the_size_limit_closes_the_socket_with_1009(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], websocket={"max_message_bytes": 2048})
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        await ws.send_json({"id": "big", "type": "chat.completions",
                            "body": chat(2, user="x" * 4096)})
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009


async def test_requests_past_the_per_socket_limit_are_refused(
        start_gateway: StartGateway, start_sim: StartSim,
        client: aiohttp.ClientSession) -> None:
    sim = await start_sim(SLOW_SIM)
    gateway = await start_gateway([sim], websocket={"max_requests_per_socket": 2})
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        for request_id in ("1", "2", "3"):
            await ws.send_json({"id": request_id, "type": "chat.completions",
                                "body": chat(2000)})
        while (message := await receive(ws))["id"] != "3":
            pass
        assert message["type"] == "error"
        assert message["error"]["code"] == "too_many_requests"
        assert message["error"]["type"] == "rate_limit_error"
        await ws.send_json({"id": "1", "type": "cancel"})
        await until_terminal(ws, {"1"})
        await ws.send_json({"id": "4", "type": "chat.completions", "body": chat(1)})
        assert (await until_terminal(ws, {"4"}))[-1]["type"] == "done"


async def test_an_unauthenticated_socket_is_refused(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], api_keys=[KEY])
    refused: list[dict[str, Any]] = [
        {}, {"headers": {"Authorization": "Bearer sk-wrong-key-0123456789"}},
        {"protocols": ("sluice",)}, {"protocols": ("sluice", "bearer.sk-wrong-key-0123456789")},
    ]
    for options in refused:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(gateway + "/v1/ws", **options)
        assert caught.value.status == 401, options
    for options in ({"headers": {"Authorization": f"Bearer {KEY}"}},
                    {"protocols": ("sluice", f"bearer.{KEY}")}):
        async with client.ws_connect(gateway + "/v1/ws", **options) as ws:
            assert ws.protocol == ("sluice" if "protocols" in options else None)
            await ws.send_json({"id": "ok", "type": "chat.completions", "body": chat(1)})
            assert (await until_terminal(ws, {"ok"}))[-1]["type"] == "done"


async def test_without_keys_a_foreign_browser_origin_is_refused(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(gateway + "/v1/ws", origin="http://evil.example")
    assert caught.value.status == 403
    async with client.ws_connect(gateway + "/v1/ws", origin=gateway) as ws:
        await ws.send_json({"id": "own", "type": "chat.completions", "body": chat(1)})
        assert (await until_terminal(ws, {"own"}))[-1]["type"] == "done"
    allowed = await start_gateway([sim_server],
                                  websocket={"allowed_origins": ["http://app.example"]})
    async with client.ws_connect(allowed + "/v1/ws", origin="http://app.example"):
        pass


async def test_a_draining_gateway_refuses_new_requests_on_a_socket_then_closes_it(
        start_gateway: StartGateway, start_sim: StartSim, client: aiohttp.ClientSession,
        gateway_apps: dict[str, Any]) -> None:
    gateway = await start_gateway([await start_sim(SLOW_SIM)])
    async with client.ws_connect(gateway + "/v1/ws") as ws, \
            client.ws_connect(gateway + "/v1/ws") as idle:
        await ws.send_json({"id": "early", "type": "chat.completions", "body": chat(20)})
        assert (await receive(ws))["type"] == "chunk"
        gateway_apps[gateway].state.drain.begin()
        await ws.send_json({"id": "late", "type": "chat.completions", "body": chat(1)})
        messages = await until_terminal(ws, {"early", "late"})
        closing = await ws.receive(timeout=10)
        idle_closing = await idle.receive(timeout=10)
    late = [m for m in messages if m["id"] == "late"]
    assert late == [{"type": "error", "id": "late", "error": late[0]["error"]}]
    assert late[0]["error"]["code"] == "shutting_down"
    assert [m for m in messages if m["id"] == "early"][-1]["type"] == "done"
    assert closing.type is aiohttp.WSMsgType.CLOSE  # once its last request ended
    assert ws.close_code == 1001
    assert idle_closing.type is aiohttp.WSMsgType.CLOSE  # nothing in flight: at once
    assert idle.close_code == 1001


async def test_a_client_that_stops_answering_pings_is_closed(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server], websocket={"ping_interval_s": 0.1,
                                                           "ping_timeout_s": 0.2})
    async with client.ws_connect(gateway + "/v1/ws", autoping=False) as ws:
        while (message := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.PING:
            pass  # never answered
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1011
    async with client.ws_connect(gateway + "/v1/ws") as ws:  # autoping answers
        await ws.send_json({"id": "p", "type": "chat.completions", "body": chat(1)})
        assert (await until_terminal(ws, {"p"}))[-1]["type"] == "done"
