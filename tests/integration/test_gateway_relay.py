"""The gateway in front of simulator engines: the OpenAI wire format, end to end."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from simulator import SimConfig

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 8}
IDLE = 'sluice_requests_in_flight{model="sim-model",version="none"}'


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture
async def gateway(start_sim, start_gateway) -> str:
    sim = await start_sim(SimConfig(decode_step_ms=2, prefill_base_ms=2))
    return await start_gateway([sim])


async def test_non_streamed_chat(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 8
    assert response.headers["x-request-id"]


async def test_streamed_chat_with_usage(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json={
            **CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 8
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8


async def test_usage_chunk_is_hidden_unless_asked_but_still_counted(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        metrics = (await http.get("/metrics")).text
    chunks = [orjson.loads(e) for e in sse_events(response.text)[:-1]]
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert 'sluice_tokens_total{kind="completion",model="sim-model",version="none"} 8.0' \
        in metrics


async def test_completions_streamed_and_not(gateway: str) -> None:
    body = {"model": "sim-model", "prompt": "Once upon a time", "max_tokens": 5}
    async with httpx.AsyncClient(base_url=gateway) as http:
        whole = await http.post("/v1/completions", json=body)
        streamed = await http.post("/v1/completions", json={**body, "stream": True})
    assert whole.json()["object"] == "text_completion"
    assert whole.json()["usage"]["completion_tokens"] == 5
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    texts = [orjson.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert len([t for t in texts if t]) == 5


async def test_official_openai_client_streams(gateway: str) -> None:
    client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    assert len(pieces) == 6
    assert usage is not None
    assert usage.completion_tokens == 6


async def test_models_health_ready_metrics(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        models = (await http.get("/v1/models")).json()
        health = await http.get("/health")
        ready = await http.get("/ready")
        await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        metrics = (await http.get("/metrics")).text
    assert [m["id"] for m in models["data"]] == ["sim-model"]
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready.json()["engines"][0]["healthy"] is True
    assert ('sluice_requests_total{endpoint="chat",engine="e0",model="sim-model",status="200",'
            'version="none"}') in metrics
    assert 'sluice_engine_up{engine="e0"} 1.0' in metrics
    assert "sluice_time_to_first_token_seconds_bucket" in metrics


async def test_client_disconnect_aborts_the_engine_request(start_sim, start_gateway) -> None:
    sim = await start_sim(SimConfig(decode_step_ms=20))
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions",
                               json={**CHAT, "max_tokens": 1000, "stream": True}) as response:
            seen = 0
            async for _ in response.aiter_bytes():
                seen += 1
                if seen == 3:
                    break
        for _ in range(40):
            if await running_requests(sim) == 0:
                break
            await asyncio.sleep(0.05)
        assert await running_requests(sim) == 0
        metrics = (await http.get("/metrics")).text
    assert 'sluice_client_disconnects_total{model="sim-model",version="none"} 1.0' in metrics
    assert f"{IDLE} 0.0" in metrics
    assert 'status="499"' in metrics


async def engine_gauge(sim: str, name: str) -> float:
    """A gauge from the engine's own /metrics (vLLM's names)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(sim + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing from the engine's /metrics")


async def running_requests(sim: str) -> float:
    return await engine_gauge(sim, "vllm:num_requests_running")


async def waiting_requests(sim: str) -> float:
    return await engine_gauge(sim, "vllm:num_requests_waiting")


async def test_many_concurrent_streams_all_complete(gateway: str) -> None:
    async def one(http: httpx.AsyncClient) -> int:
        response = await http.post("/v1/chat/completions", json={
            **CHAT, "max_tokens": 20, "stream": True})
        return len(sse_events(response.text))

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=gateway, limits=limits, timeout=30) as http:
        counts = await asyncio.gather(*(one(http) for _ in range(50)))
    assert counts == [22] * 50  # role chunk + 20 tokens + [DONE]


async def test_client_leaving_before_the_first_token_aborts_too(start_sim,
                                                                start_gateway) -> None:
    sim = await start_sim(SimConfig(hang=True))
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        request = asyncio.create_task(
            http.post("/v1/chat/completions", json={**CHAT, "stream": True}))
        await asyncio.sleep(0.3)
        assert await running_requests(sim) + await waiting_requests(sim) == 1
        request.cancel()  # the client gives up while the engine has not answered
        for _ in range(40):
            metrics = (await http.get("/metrics")).text
            if await running_requests(sim) + await waiting_requests(sim) == 0 \
                    and f"{IDLE} 0.0" in metrics:
                break
            await asyncio.sleep(0.05)
    assert await running_requests(sim) + await waiting_requests(sim) == 0
    assert f"{IDLE} 0.0" in metrics
    assert 'sluice_client_disconnects_total{model="sim-model",version="none"} 1.0' in metrics



async def test_streams_that_arrive_in_one_piece_under_concurrency(start_gateway) -> None:
    """An engine that sends a whole short stream in one write after its headers: the
    first body read already ends it, and the connection goes back to the pool while
    that read returns."""
    from aiohttp import web

    from tests.integration.fake_engine import FakeEngine

    chunk = {"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    whole = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"

    async def at_once(request: web.Request, body: dict[str, object]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # the headers first, then the whole body at once
        await asyncio.sleep(0.005)
        await response.write(whole)
        await response.write_eof()
        return response

    engine = FakeEngine(at_once)
    await engine.start()
    try:
        gateway = await start_gateway([engine.url])
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            async def one() -> httpx.Response:
                return await http.post("/v1/chat/completions", json={
                    "model": "sim-model", "stream": True,
                    "messages": [{"role": "user", "content": "x"}]})
            for _ in range(3):
                answers = await asyncio.gather(*(one() for _ in range(40)))
                assert {a.status_code for a in answers} == {200}
                assert all(a.text.endswith("data: [DONE]\n\n") for a in answers)
    finally:
        await engine.close()
