"""What vLLM's own server accepts and refuses, the gateway accepts and refuses alike."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine, StartSim
from tests.integration.fake_engine import chat_chunk, error_reply, send_events

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
QUICK = SimConfig(decode_step_ms=1, prefill_base_ms=1)
FIRST = {"routing": {"default": {"strategy": "round_robin"}}}
"""Round-robin starts at the first engine."""
DONE = b"data: [DONE]\n\n"


@pytest.fixture
async def gateway(start_sim: StartSim, start_gateway: StartGateway) -> str:
    return await start_gateway([await start_sim(QUICK)])


@pytest.mark.parametrize("fields", [
    {"n": None},
    {"stream": None},
    {"stream_options": None},
    {"max_tokens": 3.0},
    {"seed": 1.0},
    {"messages": [{"role": "ipython", "content": "x"}, {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "any string at all", "content": "hi"}]},
    {"model": None},
    {"model": ""},
], ids=lambda fields: ",".join(fields))
async def test_what_vllm_accepts_is_answered(gateway: str, fields: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sim-model"
    assert body["usage"]["completion_tokens"] == (3 if "max_tokens" in fields else 4)


async def test_a_missing_model_is_the_one_model_served(gateway: str) -> None:
    request = {k: v for k, v in CHAT.items() if k != "model"}
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        chat = await http.post("/v1/chat/completions", json={**request, "stream": True})
        completion = await http.post("/v1/completions",
                                     json={"prompt": "once upon", "max_tokens": 2})
        metrics = (await http.get("/metrics")).text
    assert chat.status_code == completion.status_code == 200
    assert chat.text.endswith("data: [DONE]\n\n")
    assert completion.json()["model"] == "sim-model"
    assert ('endpoint="chat",engine="e0",model="sim-model",status="200",version="none"} 1.0'
            in metrics)


async def test_a_missing_model_with_several_served_is_400(start_sim: StartSim,
                                                          start_gateway: StartGateway) -> None:
    one = await start_sim(QUICK)
    other = await start_sim(QUICK.model_copy(update={"model": "other-model"}))
    gateway = await start_gateway([one, other])
    request = {k: v for k, v in CHAT.items() if k != "model"}
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json=request)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "missing_required_parameter")


async def test_the_sdk_raises_bad_request_for_an_invalid_field(gateway: str) -> None:
    client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}],
            max_tokens=0)
    assert info.value.status_code == 400
    assert info.value.param == "max_tokens"
    assert info.value.code == "invalid_value"
    await client.close()


async def test_what_the_engine_refuses_is_its_own_400(gateway: str) -> None:
    """The gateway does not judge fields it does not act on; the engine does."""
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json={
            **CHAT, "stream_options": {"include_usage": True}})  # without stream: true
    assert response.status_code == 400
    assert "stream" in response.json()["error"]["message"].lower()


async def test_the_request_id_goes_to_every_engine_attempt(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}]})

    failing = await start_fake_engine(error_reply(503, {"message": "overloaded"}))
    serving = await start_fake_engine(answer)
    gateway = await start_gateway([failing.url, serving.url], **FIRST)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        retried = await http.post("/v1/chat/completions", json=CHAT,
                                  headers={"X-Request-Id": "client-id-1"})
        own = await http.post("/v1/chat/completions", json=CHAT)
    assert retried.status_code == own.status_code == 200
    assert retried.headers["x-request-id"] == "client-id-1"
    # The failed attempt and its retry elsewhere carry the client's id ...
    assert failing.headers[0]["x-request-id"] == serving.headers[0]["x-request-id"] \
        == "client-id-1"
    # ... or, when it sent none, the gateway's own, the one the client is told.
    generated = own.headers["x-request-id"]
    assert serving.headers[1]["x-request-id"] == generated
    assert {h["x-request-id"] for h in failing.headers[1:]} <= {generated}


async def test_a_continuation_carries_the_same_request_id(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    async def cut_short(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if body.get("continue_final_message"):
            return await send_events(request, [
                chat_chunk("chatcmpl-2", " two", finish_reason="length"), DONE])
        return await send_events(request, [chat_chunk("chatcmpl-1", None, role=True),
                                           chat_chunk("chatcmpl-1", " one")])

    engines = [await start_fake_engine(cut_short) for _ in range(2)]
    gateway = await start_gateway([e.url for e in engines], **FIRST)
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                   headers={"X-Request-Id": "client-id-2"})
    assert response.text.endswith(DONE.decode())
    assert "error" not in response.text
    assert [len(e.headers) for e in engines] == [1, 1]
    assert [e.headers[0]["x-request-id"] for e in engines] == ["client-id-2"] * 2
