"""The harness's one SSE client: a streamed request sent and followed event by event, timed
as the client sees it.

``stream_events`` is the transport under every reader: it POSTs the request, reads
``data:`` events until ``data: [DONE]`` and hands each JSON event, with its arrival time,
to the reader. It never raises for a failed request, only when cancelled, and names what
went wrong with a short type:

- ``http_<status>``: the server answered with a non-200 status;
- ``connection``: no response (refused, reset or closed before the headers);
- ``disconnected``: the stream broke after it had started;
- ``timeout``: the request's total timeout passed (``http_<status>`` is kept if the body
  of that answer hung);
- ``bad_event``: an event that is not a JSON object, or an unfinished one past
  ``MAX_EVENT_BYTES``;
- ``no_done``: the stream ended without ``data: [DONE]``;
- or whatever a reader stops it with (``StreamBroken``).

Two readers sit on it. ``stream_request`` fills a load-test ``RequestRecord``: it stops at
the first ``{"error": ...}`` event (``stream_error``) and requires a usage chunk
(``no_usage``; ``stream_options.include_usage``). ``stream_chat`` fills the chaos test's
``StreamRecord``: it goes on past an error event, so a stream that ended properly (an
error event, then ``[DONE]``) is told from one that was cut, and keeps every token's text
and arrival time.

Records are filled in place, so a caller that cancels a request keeps what arrived so far.
Times are ``time.perf_counter()`` minus the run's origin. Redirects are never followed (a
loopback target cannot send the harness elsewhere). Per read the work is one clock read
and a split on blank lines; each event is one orjson parse, so the client costs little
next to a server sharing its CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, Protocol

import aiohttp
import orjson

from loadtests.records import RequestRecord, StreamRecord

CHAT_PATH = "/v1/chat/completions"
DATA = b"data:"
DONE = b"[DONE]"
DRAIN_S = 1.0
"""How long to wait for the end of the body after ``[DONE]`` before closing the socket."""
MAX_EVENT_BYTES = 4 * 1024 * 1024
"""An unfinished event larger than this is a broken stream (``bad_event``)."""
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "Accept-Encoding": "identity",
}

EventReader = Callable[[dict[str, Any], float], None]
"""Takes every JSON event of a stream with its arrival time; raises ``StreamBroken`` to
stop reading."""


class Timed(Protocol):
    """A record ``stream_events`` stamps: sent at ``start``, ended at ``end``."""

    start: float
    end: float | None


class StreamBroken(Exception):
    """The stream went wrong in a way ``error`` names; ``at`` is when it was seen."""

    def __init__(self, error: str, at: float) -> None:
        super().__init__(error)
        self.error, self.at = error, at


def open_session(max_connections: int, timeout_s: float,
                 headers: Mapping[str, str] | None = None) -> aiohttp.ClientSession:
    """A session for one run: at most ``max_connections`` sockets, no cookies, bounded;
    ``headers`` go with every request (e.g. ``Authorization``).

    The session timeout is a backstop; ``stream_events`` enforces ``timeout_s`` itself.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, force_close=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s + 5.0, sock_connect=min(timeout_s, 10.0)),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=headers,
    )


async def stream_events(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    record: Timed,
    reader: EventReader,
    *,
    origin: float,
    timeout_s: float,
) -> str | None:
    """POST ``body`` to ``url`` and hand every event of its SSE stream to ``reader``.

    Sets ``record.start`` just before sending and ``record.end`` when ``[DONE]``, a
    non-200 answer or a broken event arrives. Returns None when the stream ended with
    ``[DONE]``, else the error type (see the module docstring).
    """
    data = orjson.dumps(body)
    error: str | None = None
    record.start = time.perf_counter() - origin
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(
                url, data=data, headers=HEADERS, allow_redirects=False
            ) as response:
                if response.status != 200:
                    error = f"http_{response.status}"
                    with suppress(aiohttp.ClientError):
                        await response.read()
                    record.end = time.perf_counter() - origin
                    return error
                try:
                    record.end = await _follow(response.content, reader, origin)
                except StreamBroken as exc:
                    error, record.end = exc.error, exc.at
                except (aiohttp.ClientError, OSError):
                    error = "disconnected"
    except TimeoutError:
        error = error or "timeout"  # keeps http_<status> if its body hung
    except (aiohttp.ClientError, OSError):
        error = "connection"
    return error


async def _follow(stream: aiohttp.StreamReader, reader: EventReader, origin: float) -> float:
    """Read events until ``[DONE]`` and return when it arrived; ``StreamBroken`` else."""
    pending = b""
    clock = time.perf_counter
    async for data in stream.iter_any():
        now = clock() - origin
        pending += data
        if b"\n\n" not in pending:
            if len(pending) > MAX_EVENT_BYTES:
                raise StreamBroken("bad_event", now)
            continue
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if not event.startswith(DATA):
                continue  # an SSE comment or a keep-alive
            payload = event[5:].strip()
            if payload == DONE:
                await _drain(stream)
                return now
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise StreamBroken("bad_event", now) from None
            if type(obj) is not dict:
                raise StreamBroken("bad_event", now)
            reader(obj, now)
    raise StreamBroken("no_done", clock() - origin)


async def _drain(stream: aiohttp.StreamReader) -> None:
    """Read what follows ``[DONE]`` (the chunked terminator) so the connection is reused."""
    if stream.at_eof():
        return
    with suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_S):
            await stream.read()


async def stream_request(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    record: RequestRecord,
    *,
    origin: float,
    timeout_s: float,
    keep_text: bool = False,
) -> str | None:
    """POST ``body`` to ``url`` and follow its SSE stream into ``record``.

    Returns the output text when ``keep_text`` and the request succeeded, else None.
    Chat and text completions both count: a chunk's ``delta.content`` or ``text``.
    """
    reader = _CompletionReader(record, keep_text)
    error = await stream_events(session, url, body, record, reader.take, origin=origin,
                                timeout_s=timeout_s)
    if error is None and not reader.saw_usage:
        error = "no_usage"
    record.error = error
    return "".join(reader.parts) if keep_text and error is None else None


class _CompletionReader:
    """``stream_request``'s reader: output chunk times, usage, the text if kept."""

    __slots__ = ("chunk_times", "keep_text", "parts", "record", "saw_usage")

    def __init__(self, record: RequestRecord, keep_text: bool) -> None:
        self.record = record
        self.chunk_times = record.chunk_times
        self.keep_text = keep_text
        self.parts: list[str] = []
        self.saw_usage = False

    def take(self, obj: dict[str, Any], now: float) -> None:
        if "error" in obj:
            raise StreamBroken("stream_error", now)
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            content = choice.get("text") if delta is None else delta.get("content")
            if content:
                self.chunk_times.append(now)
                if self.keep_text:
                    self.parts.append(content)
        usage = obj.get("usage")
        if usage:
            self.saw_usage = True
            self.record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.record.completion_tokens = int(usage.get("completion_tokens") or 0)


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The streamed chat request of one ``StreamRecord`` (``max_tokens`` fixes its length)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}


async def stream_chat(session: aiohttp.ClientSession, base_url: str, model: str,
                      record: StreamRecord, *, origin: float, timeout_s: float) -> None:
    """Send ``record``'s chat request and follow its stream into ``record``: every token,
    error event and usage; ``record.failure`` names a transport failure (an error event is
    not one). ``record.end`` is set however it ends."""
    error = await stream_events(
        session, base_url + CHAT_PATH, chat_body(model, record.prompt, record.max_tokens),
        record, lambda obj, now: _take_chat(obj, now, record), origin=origin,
        timeout_s=timeout_s)
    record.done, record.failure = error is None, error
    if record.end is None:
        record.end = time.perf_counter() - origin


def _take_chat(obj: dict[str, Any], now: float, record: StreamRecord) -> None:
    """``stream_chat``'s reader: one JSON event into ``record``."""
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
