"""The keep-alive pool of the generation path's HTTP/1.1 client: connections the engine
closed, the one retry on a fresh connection, the per-engine and total limits with their
bounded wait, idle expiry, and closing the transport."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import EngineError, EngineTimeout, EngineUnavailable
from gateway.upstream.http1 import Http1Transport
from gateway.upstream.http1_pool import POOL_FULL
from gateway.upstream.transport import StreamTimeouts
from tests.integration.conftest import StartRawEngine
from tests.integration.helpers import wait_until
from tests.integration.raw_engine import SSE, post, replies, sized, stream_all


async def test_an_idle_connection_the_engine_closed_is_not_used_again(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(sized(b"{}"), keep=False))  # no Connection: close
    for _ in range(3):
        response = await post(http1_transport, engine, streamed=False)
        assert await response.read(100) == b"{}"
        response.close()
        async with asyncio.timeout(5):
            await engine.closed.wait()
        engine.closed.clear()

        async def dropped() -> bool:  # the pool saw the close: nothing idle, no slot held
            pool = http1_transport._pool
            return not any(pool._idle.values()) and pool._total == 0
        await wait_until(dropped, "the closed connection to leave the pool")
    assert engine.connections == 3


async def test_a_request_on_a_kept_connection_that_dies_unanswered_is_sent_again_once(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    async def hang_up_on_the_second(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:  # as if the keep-alive timer fired as the request came
            return False
        writer.write(sized(b"{}"))
        return True

    engine = await start_raw_engine(hang_up_on_the_second)
    for _ in range(2):
        response = await post(http1_transport, engine, streamed=False)
        assert await response.read(100) == b"{}"
        response.close()
    assert (len(engine.requests), engine.connections) == (3, 2)


async def test_after_a_dead_kept_connection_the_retry_takes_a_fresh_one(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    answered: set[asyncio.StreamWriter] = set()

    async def once_per_connection(reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter, n: int) -> bool:
        if writer in answered:  # every kept connection dies as it is reused
            return False
        answered.add(writer)
        await asyncio.sleep(0.05)
        writer.write(sized(b"{}"))
        return True

    engine = await start_raw_engine(once_per_connection)
    first = [asyncio.create_task(post(http1_transport, engine, streamed=False)) for _ in range(2)]
    for response in await asyncio.gather(*first):
        await response.read(100)
        response.close()
    response = await post(http1_transport, engine, streamed=False)  # not on the other kept one
    assert await response.read(100) == b"{}"
    response.close()
    assert (len(engine.requests), engine.connections) == (4, 3)


async def test_a_new_connection_that_dies_unanswered_is_not_retried(
        start_raw_engine: StartRawEngine,
        http1_transport: Http1Transport) -> None:
    engine = await start_raw_engine(replies(b"", keep=False))
    with pytest.raises(EngineUnavailable):
        await post(http1_transport, engine)
    assert len(engine.requests) == 1


async def test_past_the_engine_limit_a_request_waits_its_turn_up_to_the_connect_bound(
        start_raw_engine: StartRawEngine) -> None:
    engine = await start_raw_engine(replies(sized(b"{}")))
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
        start_raw_engine: StartRawEngine) -> None:
    engine = await start_raw_engine(replies(SSE + b"Transfer-Encoding: chunked\r\n\r\n"))
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


async def test_the_total_limit_closes_another_engines_idle_connection(
        start_raw_engine: StartRawEngine) -> None:
    first = await start_raw_engine(replies(sized(b"{}")))
    second = await start_raw_engine(replies(sized(b"{}")))
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
        start_raw_engine: StartRawEngine) -> None:
    engine = await start_raw_engine(replies(sized(b"{}")))
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
