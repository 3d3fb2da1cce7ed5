"""The official Python ``openai`` SDK, sync and async, through the gateway to a
simulator: streaming with usage, a stream closed mid-answer frees the engine's slot,
an invalid field is a ``BadRequestError``, and the Responses API."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, OpenAI

from tests.clients.conftest import MODEL, Through
from tests.integration.helpers import metric, sim_queued, wait_until

pytestmark = pytest.mark.clients

HELLO = [{"role": "user", "content": "Say hello"}]


def sync_client(through: Through) -> OpenAI:
    return OpenAI(base_url=through.base_url, api_key="unused", max_retries=0, timeout=30)


def async_client(through: Through) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=through.base_url, api_key="unused", max_retries=0, timeout=30)


async def engine_idle(through: Through) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        async def idle() -> bool:
            return await sim_queued(http, through.sim) == 0
        await wait_until(idle, "the engine to drop the closed stream's request")


def running_now(through: Through) -> float:
    """The simulator's running requests (from a thread: a blocking read)."""
    page = httpx.get(through.sim + "/metrics", timeout=10).text
    return metric(page, "vllm:num_requests_running")


def stream_sync(through: Through) -> tuple[list[str], int | None]:
    with sync_client(through) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
    return pieces, usage


async def test_sync_client_streams_with_usage(through: Through) -> None:
    # The sync client blocks: it runs in a thread while the gateway runs in this loop.
    pieces, usage = await asyncio.to_thread(stream_sync, through)
    assert len(pieces) == 8
    assert usage == 8


async def test_async_client_streams_with_usage(through: Through) -> None:
    async with async_client(through) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        kinds = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                kinds.append("content")
            elif not chunk.choices and chunk.usage is not None:
                kinds.append(f"usage:{chunk.usage.completion_tokens}")
    assert kinds == ["content"] * 8 + ["usage:8"]


def close_after_three_sync(through: Through) -> int:
    with sync_client(through) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2000, stream=True)
        seen = 0
        for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                assert running_now(through) == 1
                stream.close()
                break
    return seen


async def test_sync_client_closing_a_stream_frees_the_engine_slot(through: Through) -> None:
    assert await asyncio.to_thread(close_after_three_sync, through) == 3
    await engine_idle(through)


async def test_async_client_closing_a_stream_frees_the_engine_slot(through: Through) -> None:
    async with async_client(through) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2000, stream=True)
        seen = 0
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                assert await asyncio.to_thread(running_now, through) == 1
                await stream.close()
                break
    await engine_idle(through)


def bad_budget_sync(through: Through) -> BadRequestError:
    with sync_client(through) as client, pytest.raises(BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens="ten")  # type: ignore[arg-type]
    return raised.value


async def test_an_invalid_field_is_a_bad_request_error_sync_and_async(
        through: Through) -> None:
    error = await asyncio.to_thread(bad_budget_sync, through)
    async with async_client(through) as client:
        with pytest.raises(BadRequestError) as raised:
            await client.chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens="ten")  # type: ignore[arg-type]
    for each in (error, raised.value):
        assert each.status_code == 400
        assert each.param == "max_tokens"  # a field the gateway acts on
        assert isinstance(each.body, dict)
        assert each.body.get("type") == "invalid_request_error"


async def test_responses_api_streamed_and_not(through: Through) -> None:
    assert through.serves("/v1/responses")
    async with async_client(through) as client:
        whole = await client.responses.create(model=MODEL, input="Say hello",
                                              max_output_tokens=8)
        stream = await client.responses.create(model=MODEL, input="Say hello",
                                               max_output_tokens=8, stream=True)
        types, text = [], ""
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
    assert whole.status == "completed"
    assert whole.output_text
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert text
