"""What a generation response starts with: Server-Timing, the engine's name, and SSE
keep-alive pings while a stream waits for its first token."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from aiohttp import web
from openai import AsyncOpenAI

from loadtests.launch import free_port
from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine, StartSim
from tests.integration.fake_engine import FakeEngine, chat_chunk, error_reply, send_events
from tests.integration.helpers import events_of, gateway_metric, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
QUICK = SimConfig(decode_step_ms=1, prefill_base_ms=1)
FIRST = {"routing": {"default": {"strategy": "round_robin"}}}
KEEPALIVE = {"streaming": {"keepalive_s": 0.02}}
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def phases(response: httpx.Response) -> list[str]:
    """The phase names of ``Server-Timing``, each checked to carry a duration."""
    names = []
    for metric in response.headers["server-timing"].split(", "):
        name, _, duration = metric.partition(";dur=")
        assert float(duration) >= 0
        names.append(name)
    return names


async def test_generation_responses_carry_server_timing_and_the_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([await start_sim(QUICK)])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        whole = await http.post("/v1/chat/completions", json=CHAT)
        streamed = await http.post("/v1/completions", json={
            "model": "sim-model", "prompt": "hi", "max_tokens": 3, "stream": True})
        models = await http.get("/v1/models")
    for response in (whole, streamed):
        assert response.status_code == 200
        assert phases(response) == ["admit", "sched", "connect", "ttfb"]
        assert response.headers["x-sluice-engine"] == "e0"
    assert streamed.content.endswith(DONE)
    assert "server-timing" not in models.headers


async def test_an_engine_failure_says_how_far_it_got(start_sim: StartSim,
                                                     start_gateway: StartGateway) -> None:
    gateway = await start_gateway([await start_sim(QUICK.model_copy(
        update={"error_rate": 1.0}))])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert phases(response) == ["admit", "sched"]  # the engine answered no stream
    assert response.headers["x-sluice-engine"] == "e0"


class Gate:
    """A fake engine's reply held until the test opens the gate: a long queue wait."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0
        self.cancelled = 0

    async def reply(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.waiting += 1
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await send_events(request, [
            chat_chunk("chatcmpl-1", None, role=True), chat_chunk("chatcmpl-1", " hello"),
            chat_chunk("chatcmpl-1", " world", finish_reason="stop"), DONE])


async def test_keepalive_sends_headers_at_once_and_pings_until_the_first_token(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    gate = Gate()
    engine = await start_fake_engine(gate.reply)
    gateway = await start_gateway([engine.url], **KEEPALIVE)
    body = b""
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200  # while the engine has not answered at all
        assert response.headers["content-type"].startswith("text/event-stream")
        assert phases(response) == ["admit"]  # all that is known when headers go out
        assert "x-sluice-engine" not in response.headers
        async for data in response.aiter_bytes():
            body += data
            if body.count(PING) >= 2:
                gate.open.set()
    assert gate.waiting == 1
    head, _, rest = body.partition(b"data: ")
    assert head
    assert head == PING * head.count(PING)
    events = events_of(b"data: " + rest)
    assert events[-1] == "data: [DONE]"
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text == " hello world"
    assert PING not in rest  # no pings once the answer flows


async def test_keepalive_still_retries_before_the_first_token(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    failing = await start_fake_engine(error_reply(503, {"message": "overloaded"}))
    gate = Gate()
    gate.open.set()
    serving = await start_fake_engine(gate.reply)
    gateway = await start_gateway([failing.url, serving.url], **FIRST, **KEEPALIVE)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert len(failing.received) == gate.waiting == 1
    assert b"error" not in response.content
    assert response.content.endswith(DONE)


async def test_keepalive_turns_a_failure_before_the_first_token_into_an_error_event(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    engine = await start_fake_engine(error_reply(503, {"message": "overloaded"}))
    gateway = await start_gateway([engine.url], **KEEPALIVE)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        whole = await http.post("/v1/chat/completions", json=CHAT)
        counted = await gateway_metric(
            http, gateway, 'sluice_requests_total{endpoint="chat",engine="e0",'
                           'model="sim-model",status="502",version="none"}')
    assert streamed.status_code == 200  # the headers went out before the engine failed
    events = events_of(streamed.content.replace(PING, b""))
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[0][6:])["error"]["type"] == "upstream_error"
    assert len(events) == 2
    assert whole.status_code == 502  # keep-alive is for streams only
    assert counted == 2  # both counted as what they were


async def test_a_client_leaving_during_keepalive_aborts_the_engine_request(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    gate = Gate()
    engine: FakeEngine = await start_fake_engine(gate.reply)
    gateway = await start_gateway([engine.url], **KEEPALIVE)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions",
                               json={**CHAT, "stream": True}) as response:
            async for data in response.aiter_bytes():
                if PING in data:
                    break  # leave while the engine still holds the request

        async def settled() -> bool:
            gone = await gateway_metric(http, gateway, "sluice_client_disconnects_total")
            running = await gateway_metric(http, gateway, "sluice_requests_in_flight")
            return gone == 1 and running == 0 and gate.cancelled == 1
        await wait_until(settled, "the disconnect to reach the engine")
        page = (await http.get("/metrics")).text
    assert 'model="sim-model",status="499",version="none"} 1.0' in page


async def test_the_sdk_reads_a_stream_with_pings(start_sim: StartSim,
                                                 start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=200, decode_step_ms=1))
    gateway = await start_gateway([sim], streaming={"keepalive_s": 0.01})
    client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        stream=True)
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    await client.close()
    assert len([p for p in pieces if p]) == 5


async def test_keepalive_with_no_engine_up_is_still_a_503(start_gateway: StartGateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{free_port()}"], **KEEPALIVE)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_engine"
