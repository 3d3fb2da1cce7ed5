"""The HTTP/1.1 client of the generation path against raw sockets on 127.0.0.1: keep-alive
reuse, the three body framings, what is never reused, the pool's limits, every timeout,
and backpressure. Each engine here writes exactly the bytes a test names."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import EngineError, EngineTimeout, EngineUnavailable
from gateway.upstream.http1 import Http1Response, Http1Transport
from gateway.upstream.http1_pool import POOL_FULL
from gateway.upstream.transport import StreamTimeouts
from tests.integration.helpers import wait_until

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answers request number ``n`` (from 1); returns whether to keep the connection."""

QUICK = StreamTimeouts(connect_s=2, first_byte_s=5, between_reads_s=5, total_s=10)
SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


def sized(body: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


class Engine:
    """A raw HTTP/1.1 server: reads each request (head and ``Content-Length`` body) and
    lets ``answer`` write the response; counts connections and the client's closes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.hung_up = 0
        """Connections the client closed (the server read its end)."""
        self.closed = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> Engine:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.hung_up += 1
                    return
                match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                assert match is not None
                self.requests.append(head + await reader.readexactly(int(match[1])))
                if not await self.answer(reader, writer, len(self.requests)):
                    self.hung_up += reader.at_eof()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()
            self.closed.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def start_engine() -> AsyncIterator[Callable[[Answer], Awaitable[Engine]]]:
    engines: list[Engine] = []

    async def start(answer: Answer) -> Engine:
        engines.append(await Engine(answer).start())
        return engines[-1]

    yield start
    for engine in engines:
        await engine.close()


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    http = Http1Transport(PoolSettings(), TimeoutSettings())
    yield http
    await http.aclose()


def replies(*responses: bytes, keep: bool = True) -> Answer:
    """Answer request ``n`` with ``responses[n - 1]`` (the last one after those)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> bool:
        writer.write(responses[min(n, len(responses)) - 1])
        await writer.drain()
        return keep
    return answer


async def until_client_hangs_up(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def stream_all(response: Http1Response) -> bytes:
    try:
        return b"".join([data async for data in response.chunks()])
    finally:
        response.close()


async def post(http: Http1Transport, engine: Engine, timeouts: StreamTimeouts = QUICK, *,
               streamed: bool = True) -> Http1Response:
    return await http.post(engine.url + "/v1/chat/completions", b'{"stream": true}',
                           {"Content-Type": "application/json", "X-Request-Id": "r1"},
                           timeouts, streamed=streamed)


async def test_sequential_requests_share_one_connection_and_send_one_plain_request(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(sized(b'{"ok": 1}')))
    for _ in range(5):
        response = await post(transport, engine, streamed=False)
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
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        for event in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            writer.write(chunked(event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        return True

    engine = await start_engine(answer)
    for _ in range(2):
        response = await post(transport, engine)
        pieces = []
        async for data in response.chunks():
            pieces.append(data)
        response.close()
        assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        assert len(pieces) >= 2  # handed over as it came, not at the end
    assert engine.connections == 1


async def test_a_body_ended_by_the_close_is_whole_and_its_connection_not_reused(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(SSE + b"\r\ndata: 1\n\ndata: [DONE]\n\n", keep=False))
    for _ in range(2):
        assert await stream_all(await post(transport, engine)) == (
            b"data: 1\n\ndata: [DONE]\n\n")
    assert engine.connections == 2


async def test_a_response_closed_unfinished_closes_its_connection(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(chunked(b"data: 1\n\n"))
        await until_client_hangs_up(reader)
        return False

    engine = await start_engine(endless)
    response = await post(transport, engine)
    assert await anext(response.chunks()) == b"data: 1\n\n"
    response.close()
    async with asyncio.timeout(5):
        await engine.closed.wait()  # the engine saw the close (and would abort)
    engine.closed.clear()
    response = await post(transport, engine)
    response.close()
    assert engine.connections == 2


async def test_a_refused_connection_is_engine_unavailable(transport: Http1Transport) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(EngineUnavailable, match="engine unreachable"):
        await transport.post(f"http://127.0.0.1:{port}/v1/completions", b"{}", {}, QUICK,
                             streamed=True)


async def test_no_first_byte_in_time_is_a_timeout(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   n: int) -> bool:
        if n == 1:  # headers at once, the first token never
            writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        await until_client_hangs_up(reader)  # 2: not even the headers
        return False

    engine = await start_engine(slow)
    timeouts = StreamTimeouts(connect_s=2, first_byte_s=0.2, between_reads_s=5, total_s=10)
    response = await post(transport, engine, timeouts)
    with pytest.raises(EngineTimeout, match="no first token in time") as caught:
        await stream_all(response)
    assert caught.value.blames_engine
    with pytest.raises(EngineTimeout, match="did not answer in time"):
        await post(transport, engine, timeouts)

    async def both_closed() -> bool:
        return engine.hung_up == 2
    await wait_until(both_closed, "the engine to see both requests closed")


async def test_a_stall_mid_stream_is_a_timeout_from_the_watchdog(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n"))
        await until_client_hangs_up(reader)
        return False

    engine = await start_engine(stall)
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
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> bool:
        writer.write(SSE + b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunked(b"data: 1\n\n"))
                await writer.drain()
                await asyncio.sleep(0.02)
        return False

    engine = await start_engine(trickle)
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
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(sized(b"x" * 1000)))
    response = await post(transport, engine, streamed=False)
    with pytest.raises(EngineError, match="larger than 100 bytes"):
        await response.read(100)
    response.close()


async def test_a_body_cut_short_is_a_broken_stream(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(SSE + b"Content-Length: 100\r\n\r\ndata: 1\n\n",
                                        keep=False))
    with pytest.raises(EngineError, match="engine stream broke") as caught:
        await stream_all(await post(transport, engine))
    assert not isinstance(caught.value, EngineTimeout)


async def test_an_idle_connection_the_engine_closed_is_not_used_again(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(sized(b"{}"), keep=False))  # no Connection: close
    for _ in range(3):
        response = await post(transport, engine, streamed=False)
        assert await response.read(100) == b"{}"
        response.close()
        async with asyncio.timeout(5):
            await engine.closed.wait()
        engine.closed.clear()

        async def dropped() -> bool:  # the pool saw the close: nothing idle, no slot held
            pool = transport._pool
            return not any(pool._idle.values()) and pool._total == 0
        await wait_until(dropped, "the closed connection to leave the pool")
    assert engine.connections == 3


async def test_a_request_on_a_kept_connection_that_dies_unanswered_is_sent_again_once(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    async def hang_up_on_the_second(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:  # as if the keep-alive timer fired as the request came
            return False
        writer.write(sized(b"{}"))
        return True

    engine = await start_engine(hang_up_on_the_second)
    for _ in range(2):
        response = await post(transport, engine, streamed=False)
        assert await response.read(100) == b"{}"
        response.close()
    assert (len(engine.requests), engine.connections) == (3, 2)


async def test_after_a_dead_kept_connection_the_retry_takes_a_fresh_one(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    answered: set[asyncio.StreamWriter] = set()

    async def once_per_connection(reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter, n: int) -> bool:
        if writer in answered:  # every kept connection dies as it is reused
            return False
        answered.add(writer)
        await asyncio.sleep(0.05)
        writer.write(sized(b"{}"))
        return True

    engine = await start_engine(once_per_connection)
    first = [asyncio.create_task(post(transport, engine, streamed=False)) for _ in range(2)]
    for response in await asyncio.gather(*first):
        await response.read(100)
        response.close()
    response = await post(transport, engine, streamed=False)  # not on the other kept one
    assert await response.read(100) == b"{}"
    response.close()
    assert (len(engine.requests), engine.connections) == (4, 3)


async def test_a_new_connection_that_dies_unanswered_is_not_retried(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(b"", keep=False))
    with pytest.raises(EngineUnavailable):
        await post(transport, engine)
    assert len(engine.requests) == 1


async def test_past_the_engine_limit_a_request_waits_its_turn_up_to_the_connect_bound(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    engine = await start_engine(replies(sized(b"{}")))
    http = Http1Transport(PoolSettings(max_connections_per_engine=1), TimeoutSettings())
    short = StreamTimeouts(connect_s=0.2, first_byte_s=5, between_reads_s=5, total_s=10)
    try:
        held = await post(http, engine, streamed=False)
        with pytest.raises(EngineTimeout, match="came free in time") as caught:
            await post(http, engine, short, streamed=False)
        assert caught.value.message == POOL_FULL
        assert not caught.value.blames_engine
        waiting = asyncio.create_task(post(http, engine, streamed=False))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await held.read(100) == b"{}"
        held.close()  # its connection goes to the waiter
        async with asyncio.timeout(5):
            response = await waiting
        assert await response.read(100) == b"{}"
        response.close()
        assert engine.connections == 1
    finally:
        await http.aclose()


async def test_closing_the_transport_turns_waiters_away(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    engine = await start_engine(replies(SSE + b"Transfer-Encoding: chunked\r\n\r\n"))
    http = Http1Transport(PoolSettings(max_connections_per_engine=1), TimeoutSettings())
    held = await post(http, engine)  # a stream that never ends
    waiting = asyncio.create_task(post(http, engine))
    await asyncio.sleep(0.05)
    await http.aclose()
    with pytest.raises(EngineUnavailable):
        async with asyncio.timeout(5):
            await waiting
    with pytest.raises(EngineError, match="engine stream broke"):
        await stream_all(held)


async def test_an_interim_response_is_skipped_and_bad_http_is_unavailable(
        start_engine: Callable[[Answer], Awaitable[Engine]],
        transport: Http1Transport) -> None:
    engine = await start_engine(replies(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + sized(b"{}", "201 Created"),
        b"SSH-2.0-OpenSSH\r\n\r\n"))
    response = await post(transport, engine, streamed=False)
    assert response.status == 201
    assert await response.read(100) == b"{}"
    response.close()
    with pytest.raises(EngineUnavailable, match="bad HTTP"):
        await post(transport, engine)


async def test_the_total_limit_closes_another_engines_idle_connection(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    first = await start_engine(replies(sized(b"{}")))
    second = await start_engine(replies(sized(b"{}")))
    http = Http1Transport(PoolSettings(max_connections=1), TimeoutSettings())
    try:
        for engine in (first, second, first):
            response = await post(http, engine, streamed=False)
            assert await response.read(100) == b"{}"
            response.close()
        async with asyncio.timeout(5):
            await first.closed.wait()
        assert (first.connections, second.connections) == (2, 1)
    finally:
        await http.aclose()


async def test_idle_connections_are_closed_after_the_idle_time(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    engine = await start_engine(replies(sized(b"{}")))
    http = Http1Transport(PoolSettings(), TimeoutSettings(), idle_s=0.2)
    try:
        response = await post(http, engine, streamed=False)
        await response.read(100)
        response.close()
        async with asyncio.timeout(5):
            await engine.closed.wait()
        assert engine.hung_up == 1
    finally:
        await http.aclose()


async def test_unread_data_pauses_reading_at_the_buffer_bound(
        start_engine: Callable[[Answer], Awaitable[Engine]]) -> None:
    body = bytes(8 * 1024 * 1024)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    n: int) -> bool:
        writer.write(sized(body))
        await writer.drain()
        return True

    engine = await start_engine(flood)
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
