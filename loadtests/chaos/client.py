"""One chat stream of the chaos test, recorded token by token as the client saw it.

``loadtests.client.stream_request`` stops reading at the first ``{"error": ...}`` event;
this reader goes on, so it can tell a stream that ended properly (an error event, then
``data: [DONE]``) from one that was cut. It also keeps every token's text and arrival
time, from which ``loadtests.chaos.report`` tells which engine produced each token.

Transport failures become short types in ``StreamRecord.failure``: ``http_<status>``,
``connection`` (no response), ``disconnected`` (broken after the headers), ``timeout``,
``bad_event`` (not JSON) and ``no_done`` (EOF without ``data: [DONE]``).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_PATH = "/v1/chat/completions"
_DRAIN_S = 1.0
_MAX_EVENT_BYTES = 1024 * 1024


@dataclass(slots=True)
class StreamRecord:
    """One request: what was asked and everything that came back. Times are seconds on
    the run's clock (``time.perf_counter()`` minus its origin)."""

    index: int
    prompt: str
    max_tokens: int
    start: float = 0.0
    end: float | None = None
    """When ``[DONE]`` (or the failure) arrived; None while it runs."""
    tokens: list[str] = field(default_factory=list)
    """The content of every event that carried text, in order (one token each)."""
    token_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    """``completion_tokens`` of the usage event."""
    role_events: int = 0
    error_event: str | None = None
    """The message of an ``{"error": ...}`` event inside the stream."""
    done: bool = False
    """``data: [DONE]`` arrived."""
    failure: str | None = None

    @property
    def first_token(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The streamed chat request of one record (``max_tokens`` fixes its length)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}


def open_session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """A session for ``connections`` concurrent streams. ``stream_chat`` bounds each one
    by ``timeout_s``; the session's own timeout is a backstop."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=aiohttp.ClientTimeout(total=timeout_s + 5.0, sock_connect=10.0),
        cookie_jar=aiohttp.DummyCookieJar())


async def stream_chat(session: aiohttp.ClientSession, base_url: str, model: str,
                      record: StreamRecord, *, origin: float, timeout_s: float) -> None:
    """Send ``record``'s request and follow its stream into ``record``; never raises for
    a failed request (only when cancelled)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    data = orjson.dumps(chat_body(model, record.prompt, record.max_tokens))
    record.start = time.perf_counter() - origin
    started = False
    try:
        async with asyncio.timeout(timeout_s), session.post(
                base_url + CHAT_PATH, data=data, headers=headers,
                allow_redirects=False) as response:
            started = True
            if response.status != 200:
                record.failure = f"http_{response.status}"
                with suppress(aiohttp.ClientError):
                    await response.read()
            else:
                await _follow(response.content, record, origin)
    except TimeoutError:
        record.failure = "timeout"
    except (aiohttp.ClientError, OSError):
        record.failure = "disconnected" if started else "connection"
    if record.end is None:
        record.end = time.perf_counter() - origin


async def _follow(stream: aiohttp.StreamReader, record: StreamRecord, origin: float) -> None:
    pending = b""
    async for data in stream.iter_any():
        now = time.perf_counter() - origin
        *events, pending = (pending + data).split(b"\n\n")
        if len(pending) > _MAX_EVENT_BYTES:
            record.failure = "bad_event"
            return
        for event in events:
            if not event.startswith(b"data:"):
                continue
            payload = event[5:].strip()
            if payload == b"[DONE]":
                record.done, record.end = True, now
                await _drain(stream)
                return
            if not _take(payload, record, now):
                record.failure = "bad_event"
                return
    record.failure = "no_done"


def _take(payload: bytes, record: StreamRecord, now: float) -> bool:
    """Account one JSON event; False when it is not a JSON object."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    if type(obj) is not dict:
        return False
    error = obj.get("error")
    if error is not None:
        record.error_event = str(error.get("message") if isinstance(error, dict) else error)
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        if "role" in delta:
            record.role_events += 1
        content = delta.get("content")
        if content:
            record.tokens.append(content)
            record.token_times.append(now)
    usage = obj.get("usage")
    if isinstance(usage, dict):
        record.usage_tokens = int(usage.get("completion_tokens") or 0)
    return True


async def _drain(stream: aiohttp.StreamReader) -> None:
    """Read what follows ``[DONE]`` (the chunked terminator) so the connection is reused."""
    if stream.at_eof():
        return
    with suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            await stream.read()
