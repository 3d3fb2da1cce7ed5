"""A stream is complete only with ``data: [DONE]``.

An engine response that ends cleanly (no reset, no timeout) before ``[DONE]`` is a broken
stream: it is continued on another engine, or ends with an error event. When only the
``[DONE]`` was missing (the answer had finished), the gateway adds it (failover outcome
``completed``: ``docs/explanation/routing.md``, "After the first byte: failover").
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from aiohttp import web

from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine
from tests.integration.fake_engine import FakeEngine, chat_chunk, send_events
from tests.integration.helpers import events_of, metric

DONE = b"data: [DONE]\n\n"
REQUEST = {"model": "sim-model", "stream": True, "max_tokens": 5,
           "messages": [{"role": "user", "content": "count to five"}]}


async def cut_short(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Three tokens, then the response ends without a finish_reason or ``[DONE]``; a
    continuation request gets the rest, properly finished."""
    if body.get("continue_final_message"):
        return await send_events(request, [
            chat_chunk("chatcmpl-second", None, role=True),
            chat_chunk("chatcmpl-second", " four"),
            chat_chunk("chatcmpl-second", " five", finish_reason="length"), DONE])
    return await send_events(request, [
        chat_chunk("chatcmpl-first", None, role=True), chat_chunk("chatcmpl-first", " one"),
        chat_chunk("chatcmpl-first", " two"), chat_chunk("chatcmpl-first", " three")])


async def finished_without_done(request: web.Request,
                                body: dict[str, Any]) -> web.StreamResponse:
    return await send_events(request, [
        chat_chunk("chatcmpl-first", None, role=True), chat_chunk("chatcmpl-first", " one"),
        chat_chunk("chatcmpl-first", " two", finish_reason="stop")])


async def _run(start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
               reply: Any, **settings: Any) -> tuple[list[str], str, list[FakeEngine]]:
    engines = [await start_fake_engine(reply) for _ in range(2)]
    gateway = await start_gateway([e.url for e in engines], **settings)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=REQUEST)
        assert response.status_code == 200
        metrics = (await http.get("/metrics")).text
    return events_of(response.content), metrics, engines


def _content(events: list[str]) -> str:
    chunks = [orjson.loads(e[6:]) for e in events if e.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c.get("choices"))


async def test_stream_ending_before_done_is_continued_elsewhere(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    events, metrics, engines = await _run(start_fake_engine, start_gateway, cut_short)
    assert events[-1] == "data: [DONE]"
    assert not [e for e in events if '"error"' in e]
    assert _content(events) == " one two three four five"
    assert {orjson.loads(e[6:])["id"] for e in events[:-1]} == {"chatcmpl-first"}
    assert metric(metrics, 'sluice_failovers_total{model="sim-model",outcome="continued",'
                           'version="none"}') == 1
    continued = [body for e in engines for body in e.received
                 if body.get("continue_final_message")]
    assert len(continued) == 1
    assert continued[0]["messages"][-1] == {"role": "assistant", "content": " one two three"}
    assert sorted(len(e.received) for e in engines) == [1, 1]


async def test_stream_ending_before_done_without_failover_ends_with_an_error_event(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    events, _, engines = await _run(start_fake_engine, start_gateway, cut_short,
                                    resilience={"failover": False})
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["type"] == "upstream_error"
    assert _content(events) == " one two three"
    assert sum(len(e.received) for e in engines) == 1


async def test_finished_stream_missing_only_done_gets_it_added(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    events, metrics, engines = await _run(start_fake_engine, start_gateway,
                                          finished_without_done)
    assert events[-1] == "data: [DONE]"
    assert not [e for e in events if '"error"' in e]
    assert _content(events) == " one two"
    assert metric(metrics, 'sluice_failovers_total{model="sim-model",outcome="completed",'
                           'version="none"}') == 1
    assert sum(len(e.received) for e in engines) == 1  # nothing was sent anywhere else
