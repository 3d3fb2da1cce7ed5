"""Broken engine output, through a real gateway on a socket and a real engine server.

The engine is :class:`FakeEngine` writing exactly the bytes of each case. Whatever it
sends, the client gets a well-formed stream (every ``data:`` event one JSON object,
``data: [DONE]`` last) or a 502 in OpenAI's shape, never the engine's own text; the
fault is charged to the engine (``sluice_upstream_errors_total``) and is never counted
as a client disconnect. ``docs/reference/errors.md``, "When an engine misbehaves", names
these tests.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine
from tests.integration.fake_engine import Reply, chat_chunk, raw_reply
from tests.integration.helpers import events_of, metric

MODEL = "sim-model"
STREAM = {"model": MODEL, "stream": True, "max_tokens": 5,
          "messages": [{"role": "user", "content": "capital of France?"}]}
PLAIN = {**STREAM, "stream": False}
KEY = "sk-engine-faults-0123456789"

ROLE = chat_chunk("c1", None, role=True)
PARIS = chat_chunk("c1", " Paris")
DOT = chat_chunk("c1", ".", finish_reason="stop")
DONE = b"data: [DONE]\n\n"
SECRET = "secret-host-17:/opt/engine"


def usage_event(usage: bytes, *, choices: bytes = b"[]") -> bytes:
    """A chunk carrying ``usage`` exactly as given (any bytes, valid JSON or not)."""
    return (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,'
            b'"model":"sim-model","choices":' + choices + b',"usage":' + usage + b'}\n\n')


USAGE = usage_event(b'{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}')
ANSWER = [ROLE, PARIS, DOT, USAGE, DONE]


@dataclass
class Seen:
    response: httpx.Response
    metrics: str
    ready: dict[str, Any]

    @property
    def charged(self) -> float:
        """Faults the gateway charged to the engine."""
        return metric(self.metrics, 'sluice_upstream_errors_total{engine="e0"')

    def status_counted(self) -> list[str]:
        """The ``status`` label of every request the director counted for the model."""
        return [re.findall(r'status="(\d+)"', line)[0] for line in self.metrics.splitlines()
                if line.startswith("sluice_requests_total{") and f'model="{MODEL}"' in line
                and float(line.rsplit(" ", 1)[1]) > 0]

    def assert_not_a_disconnect(self) -> None:
        assert metric(self.metrics, "sluice_client_disconnects_total") == 0
        assert 'status="499"' not in self.metrics


async def through(start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
                  reply: Reply, body: dict[str, Any], **settings: Any) -> Seen:
    """One request through a gateway in front of one engine answering ``reply``."""
    engine = await start_fake_engine(reply)
    gateway = await start_gateway([engine.url], api_keys=[KEY], **settings)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=headers) as http:
        response = await http.post("/v1/chat/completions", json=body)
        metrics = (await http.get("/metrics")).text
        ready = (await http.get("/ready")).json()
    return Seen(response, metrics, ready)


def well_formed(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of a well-formed SSE stream (asserted so)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.content)
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    parsed = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def content(events: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in events if c.get("choices"))


def openai_502(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    return error


def ends_with_engine_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The one error event a broken stream ends with (asserted to be the last)."""
    assert [e for e in events if "error" in e] == events[-1:]
    error: dict[str, Any] = events[-1]["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "engine_error")
    return error


# --- 1, 2, 4: bad events mid-stream end with an error event; before the first byte, 502


def token_with_usage(usage: bytes) -> bytes:
    """The " Paris" chunk carrying ``usage`` (as ``continuous_usage_stats`` sends it)."""
    return b"data: " + orjson.dumps(orjson.loads(PARIS[6:]))[:-1] + b',"usage":' + usage \
        + b"}\n\n"


MID_STREAM = {
    "invalid_json": [ROLE, PARIS, b'data: {"id": "c1", "choices": [\n\n', DOT, DONE],
    "invalid_json_carrying_error": [ROLE, PARIS, b'data: {"error": {"message": "oo\n\n',
                                    DONE],
    "invalid_json_carrying_usage": [
        ROLE, PARIS, token_with_usage(b'{"prompt_tokens": 5, "completion_tok'), DOT, DONE],
    "error_event": [ROLE, PARIS, b'data: {"error": {"message": "CUDA out of memory on '
                    + SECRET.encode() + b'", "type": "InternalServerError", "code": 500}}'
                    b"\n\n", DONE],
    "negative_usage": [
        ROLE, PARIS, token_with_usage(b'{"prompt_tokens":5,"completion_tokens":-1}'), DOT,
        DONE],
    "float_usage": [
        ROLE, PARIS, token_with_usage(b'{"prompt_tokens":5,"completion_tokens":1.5}'), DOT,
        DONE],
    "string_usage": [
        ROLE, PARIS, token_with_usage(b'{"prompt_tokens":"7","completion_tokens":1}'), DOT,
        DONE],
}


@pytest.mark.parametrize("case", sorted(MID_STREAM))
async def test_a_bad_event_mid_stream_ends_with_an_error_event(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway, case: str) -> None:
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(*MID_STREAM[case], gap_s=0.01), STREAM)
    events = well_formed(seen.response)
    error = ends_with_engine_error(events)
    assert SECRET not in error["message"]
    assert "CUDA" not in error["message"]
    assert SECRET not in seen.response.text
    assert content(events) == " Paris"
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


FIRST_EVENT = {
    "invalid_json": [b"data: {oops\n\n", ROLE, PARIS, DOT, DONE],
    "json_list": [b"data: [1, 2]\n\n", DONE],
    "error_event": [b'data: {"error": {"message": "' + SECRET.encode() + b'"}}\n\n', DONE],
    "negative_usage": [usage_event(b'{"prompt_tokens":-5,"completion_tokens":0}'), DONE],
}


@pytest.mark.parametrize("case", sorted(FIRST_EVENT))
async def test_a_bad_first_event_is_a_502(start_fake_engine: StartFakeEngine,
                                          start_gateway: StartGateway, case: str) -> None:
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(*FIRST_EVENT[case]), STREAM)
    error = openai_502(seen.response)
    assert SECRET not in seen.response.text
    assert error["code"] == "engine_error"
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


# --- 4: usage after the answer finished


@pytest.mark.parametrize("usage", [b'{"prompt_tokens":5,"completion_tokens":-2}',
                                   b'{"prompt_tokens":5,"completion_tokens":1.5}',
                                   b'{"prompt_tokens":"7","completion_tokens":2}',
                                   b'{"prompt_tokens": 5, "completion_tok'])
async def test_bad_usage_after_the_answer_ends_the_stream_without_it(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        usage: bytes) -> None:
    """The answer is whole: the client gets it and ``[DONE]``, without a usage chunk it
    could not trust; the engine is charged and the request counts no tokens."""
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(ROLE, PARIS, DOT, usage_event(usage), DONE),
                         {**STREAM, "stream_options": {"include_usage": True}})
    events = well_formed(seen.response)
    assert not [e for e in events if "error" in e or "usage" in e]
    assert content(events) == " Paris."
    assert seen.charged == 1
    assert metric(seen.metrics, "sluice_tokens_total") == 0
    assert metric(seen.metrics,
                  f'sluice_failovers_total{{model="{MODEL}",outcome="completed",'
                  'version="none"}') == 1
    seen.assert_not_a_disconnect()


@pytest.mark.parametrize("include_usage", [True, False])
async def test_usage_with_whitespace_is_read_and_counted(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        include_usage: bool) -> None:
    spaced = (b'data: {"id": "c1", "choices": [], "usage" : { "prompt_tokens" : 5 ,'
              b' "completion_tokens" : 2 , "total_tokens" : 7 } }\n\n')
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(ROLE, PARIS, DOT, spaced, DONE),
                         {**STREAM, "stream_options": {"include_usage": include_usage}})
    events = well_formed(seen.response)
    assert content(events) == " Paris."
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage == ([{"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}]
                     if include_usage else [])
    assert metric(seen.metrics,
                  f'sluice_tokens_total{{kind="prompt",model="{MODEL}",version="none"}}') == 5
    assert metric(seen.metrics,
                  f'sluice_tokens_total{{kind="completion",model="{MODEL}",version="none"}}') == 2
    assert seen.charged == 0
    assert seen.status_counted() == ["200"]


# --- 3: valid SSE in every framing


def framed(event: bytes, ending: bytes) -> bytes:
    """``event`` (``data: ...\\n\\n``) with ``ending`` for each of its two line ends."""
    return event[:-2] + ending + ending


FRAMINGS = {
    "crlf": [framed(e, b"\r\n") for e in ANSWER],
    "cr": [framed(e, b"\r") for e in ANSWER],
    # one write ends in \r, the next opens with its \n: still one line ending
    "crlf_split_between_cr_and_lf": [
        part for e in ANSWER for part in (framed(e, b"\r\n")[:-1], b"\n")],
    # each data line in one write, its blank line in the next
    "lf_lines_split": [part for e in ANSWER for part in (e[:-1], b"\n")],
    # an event cut mid-JSON, and several events in one write
    "lf_cut_anywhere": [ROLE + PARIS[:17], PARIS[17:] + DOT[:3], DOT[3:], USAGE + DONE],
    "multi_line_data_and_comments": [
        b": keep-alive\n\n", ROLE, b'data: {"id": "c1", "choices": [{"index": 0,\n'
        b'data: "delta": {"content": " Paris"}}]}\n\n', DOT, USAGE, DONE],
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
async def test_valid_sse_framing_gets_the_whole_answer(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        framing: str) -> None:
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(*FRAMINGS[framing], gap_s=0.02),
                         {**STREAM, "stream_options": {"include_usage": True}})
    events = well_formed(seen.response)
    assert content(events) == " Paris."
    assert [e["usage"]["completion_tokens"] for e in events if e.get("usage")] == [2]
    assert seen.charged == 0
    assert seen.status_counted() == ["200"]


# --- 5: an endless event; a non-streamed answer over max_answer_bytes


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("after_a_token", [True, False])
async def test_an_endless_event_is_cut_off_and_memory_stays_bounded(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        after_a_token: bool) -> None:
    """The engine writes one event that never ends (up to 256 MiB, until the gateway
    hangs up); the gateway holds at most ``max_event_bytes`` of it (default 4 MiB)."""
    written = 0
    block = b"x" * 65536

    async def endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if after_a_token:
            await response.write(ROLE + PARIS)
        await response.write(b'data: {"id": "c1", "choices": [{"delta": {"content": "')
        try:
            while written < 256 * 1024 * 1024:
                await response.write(block)
                written += len(block)
        except ConnectionError:
            pass  # the gateway hung up: what this test wants
        return response

    peak = before = rss_bytes()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        seen = await through(start_fake_engine, start_gateway, endless, STREAM)
    finally:
        done.set()
        await sampler
    if after_a_token:
        events = well_formed(seen.response)
        assert content(events) == " Paris"
        assert "over 4194304 bytes" in ends_with_engine_error(events)["message"]
    else:
        assert "over 4194304 bytes" in openai_502(seen.response)["message"]
    assert written < 64 * 1024 * 1024  # the gateway stopped reading soon after 4 MiB
    assert peak - before < 128 * 1024 * 1024
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


async def test_a_non_streamed_answer_over_max_answer_bytes_is_a_502(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    big = orjson.dumps({"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x" * 20000},
         "finish_reason": "length"}], "usage": {"prompt_tokens": 5,
                                                "completion_tokens": 2}})
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(big[:8000], big[8000:], content_type="application/json"),
                         PLAIN, max_answer_bytes=4096)
    assert "larger than 4096 bytes" in openai_502(seen.response)["message"]
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


# --- 6: not JSON; a 5xx page with internals


NOT_OPENAI = {
    "html": b"<html><body>Welcome to nginx!</body></html>",
    "invalid_json_object": b'{"id": "c1", "choices": [',
    "json_list": b'[{"id": "c1"}]',
    "negative_usage": b'{"id": "c1", "choices": [], "usage": {"prompt_tokens": -1}}',
}


@pytest.mark.parametrize("case", sorted(NOT_OPENAI))
async def test_a_non_streamed_answer_that_is_not_openai_shaped_is_a_502(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway, case: str) -> None:
    content_type = "text/html" if case == "html" else "application/json"
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(NOT_OPENAI[case], content_type=content_type), PLAIN)
    error = openai_502(seen.response)
    assert "nginx" not in seen.response.text
    assert error["code"] == "engine_error"
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


async def test_a_streamed_200_that_is_not_sse_is_a_502(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    page = b"<html>\n\n<body>" + SECRET.encode() + b"</body>\n\n</html>"
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(page, content_type="text/html"), STREAM)
    assert "before its first event" in openai_502(seen.response)["message"]
    assert SECRET not in seen.response.text
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()


@pytest.mark.parametrize("body", [STREAM, PLAIN])
@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_page_never_reaches_the_client_or_ready(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        body: dict[str, Any], status: int) -> None:
    page = (b"<html><h1>Internal Server Error</h1><pre>Traceback: " + SECRET.encode()
            + b"</pre></html>")
    seen = await through(start_fake_engine, start_gateway,
                         raw_reply(page, status=status, content_type="text/html"), body)
    error = openai_502(seen.response)
    assert error["message"] == f"engine error (HTTP {status})"
    assert SECRET not in seen.response.text
    engine = seen.ready["engines"][0]
    assert engine["error"] == f"engine error (HTTP {status})"  # the full view, with a key
    assert SECRET not in orjson.dumps(seen.ready).decode()
    assert seen.charged == 1
    assert seen.status_counted() == ["502"]
    seen.assert_not_a_disconnect()
