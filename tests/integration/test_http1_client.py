"""The generation path's HTTP/1.1 client against raw sockets on 127.0.0.1: the request
it writes, the three body framings, keep-alive reuse and what is never reused, every
timeout, backpressure, and the same on uvloop (production's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import pytest
import uvloop

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import EngineError, EngineTimeout, EngineUnavailable
from gateway.upstream.http1 import Http1Transport
from gateway.upstream.transport import StreamTimeouts
from tests.integration.conftest import StartRawEngine
from tests.integration.helpers import wait_until
from tests.integration.raw_engine import (
    QUICK,
    SSE,
    Engine,
    chunked,
    post,
    replies,
    sized,
    stream_all,
    until_client_hangs_up,
)


async def test_sequential_requests_share_one_connection_and_send_one_plain_request(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(sized(b'{"ok": 1}')))
    for _ in range(5):
        response = await post(http1_transport, engine, streamed=False)
        assert response.status == 200
        assert await response.read(1000) == b'{"ok": 1}'
        response.close()
    assert engine.connections == 1
    assert len(engine.requests) == 5
    port = engine.url.rpartition(":")[2]
    assert engine.requests[0] == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode()
        + b"\r\nContent-Type: application/json\r\nX-Request-Id: r1\r\n"
        b"Content-Length: 16\r\n\r\n" + b'{"stream": true}')


async def test_a_chunked_stream_arrives_piece_by_piece_and_is_reused(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        for event in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            writer.write(chunked(event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        return True

    engine = await start_raw_engine(answer)
    for _ in range(2):
        response = await post(http1_transport, engine)
        pieces = []
        async for data in response.chunks():
            pieces.append(data)
        response.close()
        assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        assert len(pieces) >= 2  # handed over as it came, not at the end
    assert engine.connections == 1


async def test_a_body_ended_by_the_close_is_whole_and_its_connection_not_reused(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(SSE + b"\r\ndata: 1\n\ndata: [DONE]\n\n", keep=False))
    for _ in range(2):
        assert await stream_all(await post(http1_transport, engine)) == (
            b"data: 1\n\ndata: [DONE]\n\n")
    assert engine.connections == 2


async def test_a_response_closed_unfinished_closes_its_connection(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(chunked(b"data: 1\n\n"))
        await until_client_hangs_up(reader)
        return False

    engine = await start_raw_engine(endless)
    response = await post(http1_transport, engine)
    assert await anext(response.chunks()) == b"data: 1\n\n"
    response.close()
    async with asyncio.timeout(5):
        await engine.closed.wait()  # the engine saw the close (and would abort)
    engine.closed.clear()
    response = await post(http1_transport, engine)
    response.close()
    assert engine.connections == 2


async def test_an_interim_response_is_skipped_and_bad_http_is_unavailable(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + sized(b"{}", "201 Created"),
        b"SSH-2.0-OpenSSH\r\n\r\n"))
    response = await post(http1_transport, engine, streamed=False)
    assert response.status == 201
    assert await response.read(100) == b"{}"
    response.close()
    with pytest.raises(EngineUnavailable, match="bad HTTP"):
        await post(http1_transport, engine)


async def test_a_refused_connection_is_engine_unavailable(http1_transport: Http1Transport) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(EngineUnavailable, match="engine unreachable"):
        await http1_transport.post(f"http://127.0.0.1:{port}/v1/completions", b"{}", {},
                                   QUICK, streamed=True)


async def test_no_first_byte_in_time_is_a_timeout(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   n: int) -> bool:
        if n == 1:  # headers at once, the first token never
            writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        await until_client_hangs_up(reader)  # 2: not even the headers
        return False

    engine = await start_raw_engine(slow)
    timeouts = StreamTimeouts(connect_s=2, first_byte_s=0.2, between_reads_s=5, total_s=10)
    response = await post(http1_transport, engine, timeouts)
    with pytest.raises(EngineTimeout, match="no first token in time") as caught:
        await stream_all(response)
    assert caught.value.blames_engine
    with pytest.raises(EngineTimeout, match="did not answer in time"):
        await post(http1_transport, engine, timeouts)

    async def both_closed() -> bool:
        return engine.hung_up == 2
    await wait_until(both_closed, "the engine to see both requests closed")


async def test_a_stall_mid_stream_is_a_timeout_from_the_watchdog(
        start_raw_engine: StartRawEngine) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n"))
        await until_client_hangs_up(reader)
        return False

    engine = await start_raw_engine(stall)
    http = Http1Transport(PoolSettings(), TimeoutSettings(between_tokens_s=0.2))
    try:
        timeouts = StreamTimeouts(connect_s=2, first_byte_s=5, between_reads_s=0.2,
                                  total_s=10)
        response = await post(http, engine, timeouts)
        chunks = response.chunks()
        assert await anext(chunks) == b"data: 1\n\n"
        with pytest.raises(EngineTimeout, match="stopped sending tokens") as caught:
            await anext(chunks)
        assert caught.value.blames_engine
        response.close()
    finally:
        await http.aclose()


async def test_the_total_bound_ends_streams_and_whole_answers_without_blame(
        start_raw_engine: StartRawEngine) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunked(b"data: 1\n\n"))
                await writer.drain()
                await asyncio.sleep(0.02)
        return False

    engine = await start_raw_engine(trickle)
    http = Http1Transport(PoolSettings(), TimeoutSettings(total_s=0.4))
    timeouts = StreamTimeouts(connect_s=2, first_byte_s=5, between_reads_s=5, total_s=0.4)
    try:
        for streamed in (True, False):
            response = await post(http, engine, timeouts, streamed=streamed)
            reading = stream_all(response) if streamed else response.read(1 << 20)
            with pytest.raises(EngineTimeout, match="total time limit") as caught:
                await reading
            response.close()
            assert not caught.value.blames_engine
    finally:
        await http.aclose()


async def test_an_answer_over_the_limit_is_an_engine_error(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(sized(b"x" * 1000)))
    response = await post(http1_transport, engine, streamed=False)
    with pytest.raises(EngineError, match="larger than 100 bytes"):
        await response.read(100)
    response.close()


async def test_a_body_cut_short_is_a_broken_stream(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(SSE + b"Content-Length: 100\r\n\r\ndata: 1\n\n",
                                        keep=False))
    with pytest.raises(EngineError, match="engine stream broke") as caught:
        await stream_all(await post(http1_transport, engine))
    assert not isinstance(caught.value, EngineTimeout)


async def test_unread_data_pauses_reading_at_the_buffer_bound(
        start_raw_engine: StartRawEngine) -> None:
    body = bytes(8 * 1024 * 1024)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> bool:
        writer.write(sized(body))
        await writer.drain()
        return True

    engine = await start_raw_engine(flood)
    bound = 64 * 1024
    http = Http1Transport(PoolSettings(), TimeoutSettings(), max_buffer=bound)
    try:
        response = await post(http, engine)
        chunks = response.chunks()
        received = len(await anext(chunks))
        await asyncio.sleep(0.3)  # nobody reads: the socket is not read either
        connection = response._connection
        assert connection is not None
        assert 0 < connection.buffered <= bound + 256 * 1024  # one socket read past it
        async for data in chunks:
            received += len(data)
        assert received == len(body)
        response.close()
    finally:
        await http.aclose()


def test_the_client_runs_on_uvloop() -> None:
    """The gateway serves on uvloop (whose transports are not asyncio's classes); the
    tests above run on asyncio's loop. A chunked stream twice on one connection, a body
    ended by the close, and a refusal, on a uvloop loop of their own."""
    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         n: int) -> bool:
            if n == 3:
                writer.write(SSE + b"\r\ndata: [DONE]\n\n")
                return False
            writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n"
                         + chunked(b"data: 1\n\n") + b"0\r\n\r\n")
            return True

        engine = await Engine(answer).start()
        http = Http1Transport(PoolSettings(), TimeoutSettings())
        try:
            for body in (b"data: 1\n\n", b"data: 1\n\n", b"data: [DONE]\n\n"):
                assert await stream_all(await post(http, engine)) == body
            assert engine.connections == 1
            await engine.close()
            with pytest.raises(EngineUnavailable):
                await post(http, engine)
        finally:
            await http.aclose()

    failures: list[BaseException] = []

    def run() -> None:
        try:
            uvloop.run(scenario())
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)  # a loop of its own, beside the tests' loop
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if failures:
        raise failures[0]
