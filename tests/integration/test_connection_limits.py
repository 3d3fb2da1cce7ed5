"""Connection limits (``gateway/edge.py``), over raw sockets: 431 for oversized heads,
408 for heads and bodies that do not arrive, and the connection limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import httpx
import orjson

from simulator import SimConfig

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
FAST = SimConfig(decode_step_ms=1, prefill_base_ms=1)
WAIT_S = 10.0
"""Bound on every wait for the gateway to answer or close (the timeouts are far shorter)."""

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def connect(gateway: str) -> AsyncIterator[Conn]:
    address = urlsplit(gateway)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def answer_then_close(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    """The one response the gateway sends before it closes the connection: status and
    the OpenAI error object (the read ends only at the gateway's close)."""
    async with asyncio.timeout(WAIT_S):
        raw = await reader.read()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert b"connection: close" in lines
    assert b"content-type: application/json" in lines
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return int(lines[0].split()[1]), error


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the next response on a kept-alive connection; its body is read."""
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        await reader.readexactly(length)
    return int(head.split()[1])


def head(path: str = "/health", *, method: str = "GET", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: gateway\r\n".encode() + extra + b"\r\n"


# 431


async def test_a_header_larger_than_the_limit_is_431_before_it_is_whole(start_gateway) -> None:
    gateway = await start_gateway(limits={"max_header_bytes": 32 * 1024})
    async with connect(gateway) as (reader, writer):
        # 40 KiB of one header value, never finished: httptools would keep reading it.
        await send(writer, b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Big: "
                   + b"a" * 40 * 1024)
        status, error = await answer_then_close(reader)
    assert status == 431
    assert error["code"] == "headers_too_large"


async def test_more_headers_than_the_limit_is_431(start_gateway) -> None:
    gateway = await start_gateway(limits={"max_headers": 100})
    lines = b"".join(b"X-H%d: 1\r\n" % i for i in range(100))  # and Host: 101 lines
    async with connect(gateway) as (reader, writer):
        await send(writer, head(extra=lines))
        status, error = await answer_then_close(reader)
    assert status == 431
    assert error["code"] == "headers_too_large"


async def test_heads_within_the_limits_are_served(start_gateway) -> None:
    gateway = await start_gateway(limits={"max_header_bytes": 32 * 1024, "max_headers": 100})
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(98))
    large = b"X-Big: " + b"a" * 30 * 1024 + b"\r\n"
    body = b"x" * 256 * 1024  # sent with the head: its bytes are not head bytes
    async with connect(gateway) as (reader, writer):
        await send(writer, head(extra=many))
        assert await status_of(reader) == 200
        await send(writer, head(extra=large))
        assert await status_of(reader) == 200
        await send(writer, head(method="POST", extra=large + b"Content-Length: %d\r\n"
                                % len(body)) + body)
        assert await status_of(reader) == 405


# 408


async def test_a_connection_that_sends_nothing_is_408_and_closed(start_gateway) -> None:
    gateway = await start_gateway(limits={"header_timeout_s": 0.5})
    async with connect(gateway) as (reader, _):
        status, error = await answer_then_close(reader)
    assert status == 408
    assert error["code"] == "request_timeout"


async def test_half_a_request_line_is_408_and_closed(start_gateway) -> None:
    gateway = await start_gateway(limits={"header_timeout_s": 0.5})
    async with connect(gateway) as (reader, writer):
        await send(writer, b"GET /hea")
        status, _ = await answer_then_close(reader)
    assert status == 408


async def test_dribbled_headers_are_408_at_the_head_deadline(start_gateway) -> None:
    """Each line comes well within the timeout; the head as a whole does not."""
    gateway = await start_gateway(limits={"header_timeout_s": 0.5})
    async with connect(gateway) as (reader, writer):
        await send(writer, b"GET /health HTTP/1.1\r\n")

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for i in range(200):  # 20 s of it, unless the gateway cuts it short
                    await send(writer, b"X-D%d: 1\r\n" % i)
                    await asyncio.sleep(0.1)

        dribbler = asyncio.create_task(dribble())
        try:
            status, _ = await answer_then_close(reader)
        finally:
            dribbler.cancel()
    assert status == 408


async def test_a_body_shorter_than_its_content_length_is_408_and_closed(
        start_gateway) -> None:
    gateway = await start_gateway(limits={"body_timeout_s": 0.5})
    async with connect(gateway) as (reader, writer):
        await send(writer, head("/v1/chat/completions", method="POST",
                                extra=b"Content-Type: application/json\r\n"
                                      b"Content-Length: 1000\r\n") + b'{"model": ')
        status, error = await answer_then_close(reader)
    assert status == 408
    assert error["code"] == "request_timeout"


async def test_a_slow_body_that_keeps_coming_is_read(start_sim, start_gateway) -> None:
    """The body timeout is between bytes, not for the whole body."""
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], limits={"body_timeout_s": 2.0})
    body = orjson.dumps(CHAT)
    async with connect(gateway) as (reader, writer):
        await send(writer, head("/v1/chat/completions", method="POST",
                                extra=b"Content-Type: application/json\r\n"
                                      b"Content-Length: %d\r\n" % len(body)))
        for i in range(0, len(body), 4):  # ~2.5 s in all, more than the timeout
            await send(writer, body[i:i + 4])
            await asyncio.sleep(0.1)
        assert await status_of(reader) == 200


async def test_keep_alive_and_long_streams_are_not_read_timeouts(
        start_sim, start_gateway) -> None:
    """A kept-alive connection may idle past the head timeout (uvicorn's keep-alive
    timeout governs it), and a stream may run far past both read timeouts."""
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=40))
    gateway = await start_gateway([sim], limits={"header_timeout_s": 0.3,
                                                 "body_timeout_s": 0.3})
    async with connect(gateway) as (reader, writer):
        await send(writer, head())
        assert await status_of(reader) == 200
        await asyncio.sleep(1.0)  # idle, kept alive
        await send(writer, head())
        assert await status_of(reader) == 200
    async with httpx.AsyncClient(base_url=gateway, timeout=WAIT_S) as http:
        stream = {**CHAT, "stream": True, "max_tokens": 40}  # ~1.6 s
        response = await http.post("/v1/chat/completions", json=stream)
    events = [e for e in response.text.split("\n\n") if e]
    assert response.status_code == 200
    assert events[-1] == "data: [DONE]"
    assert not [e for e in events if '"error"' in e]


async def test_an_idle_connection_is_closed_after_keep_alive_s(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], limits={"keep_alive_s": 1})
    async with connect(gateway) as (reader, writer):
        await send(writer, head())
        assert await status_of(reader) == 200
        await asyncio.sleep(0.5)  # within keep_alive_s: reused
        await send(writer, head())
        assert await status_of(reader) == 200
        async with asyncio.timeout(WAIT_S):
            assert await reader.read() == b""  # closed, silently, about 1 s later


# The connection limit


async def test_past_the_limit_the_oldest_waiting_connection_makes_room(
        start_gateway) -> None:
    gateway = await start_gateway(limits={"max_connections": 8})
    async with AsyncExitStack() as stack:
        oldest, _ = await stack.enter_async_context(connect(gateway))
        idle = [await stack.enter_async_context(connect(gateway)) for _ in range(7)]
        async with httpx.AsyncClient(base_url=gateway, timeout=WAIT_S) as http:
            assert (await http.get("/health")).status_code == 200
        status, error = await answer_then_close(oldest)
        assert status == 408
        assert error["code"] == "request_timeout"
        assert not any(reader.at_eof() for reader, _ in idle)


async def test_when_every_connection_holds_a_request_a_new_one_is_503(
        start_gateway) -> None:
    """Without reserved slots it is refused before it sends a byte (with them it may
    still ask a probe: ``test_connection_slots.py``)."""
    gateway = await start_gateway(limits={"max_connections": 4, "reserved_connections": 0})
    async with AsyncExitStack() as stack:
        for _ in range(4):  # heads in, bodies never: requests in progress
            reader, writer = await stack.enter_async_context(connect(gateway))
            await send(writer, head("/v1/chat/completions", method="POST",
                                    extra=b"Content-Type: application/json\r\n"
                                          b"Expect: 100-continue\r\n"
                                          b"Content-Length: 100\r\n"))
            async with asyncio.timeout(WAIT_S):  # the app is reading its body now
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        async with connect(gateway) as (reader, _):
            status, error = await answer_then_close(reader)
        assert status == 503
        assert error["code"] == "too_many_connections"
