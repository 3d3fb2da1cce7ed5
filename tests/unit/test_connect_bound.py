"""The upstream bounds that count loop turns (``gateway.upstream.bounds``): a busy
gateway loop does not trip the connect bound nor a health check's, an engine that does
not accept (``EngineConnectTimeout``) or answer (``EngineTimeout``) still does."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import EngineConnectTimeout, EngineError, EngineTimeout
from gateway.upstream.aiohttp_transport import AiohttpTransport
from gateway.upstream.http1 import Http1Transport
from gateway.upstream.transport import StreamTimeouts

CONNECT_S = 0.2
TIMEOUTS = StreamTimeouts(CONNECT_S, 10.0, 10.0, 30.0)


@pytest.fixture
async def engine_url() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_post("/x", ok)
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/x"
    await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    upstream = Http1Transport(PoolSettings(), TimeoutSettings(connect_s=CONNECT_S))
    yield upstream
    await upstream.aclose()


async def post(transport: Http1Transport, url: str) -> str | EngineError:
    try:
        response = await transport.post(url, b"{}", {}, TIMEOUTS, streamed=False)
    except EngineError as exc:
        return exc
    await response.read(100)
    response.close()
    return "ok"


async def test_a_loop_stall_past_the_bound_fails_no_connect(
        engine_url: str, transport: Http1Transport) -> None:
    # 100 connects begin, then the loop is busy for longer than the bound (as when 1,000
    # requests arrive together on a loaded machine); the engine accepted them at once.
    sent = [asyncio.create_task(post(transport, engine_url)) for _ in range(100)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    time.sleep(CONNECT_S * 2.5)  # noqa: ASYNC251 - the stall under test
    assert await asyncio.gather(*sent) == ["ok"] * 100


async def test_an_engine_that_does_not_accept_fails_at_the_bound_as_a_connect_timeout(
        transport: Http1Transport) -> None:
    # A listener that never accepts, its queue full: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        answer = await post(transport, f"http://127.0.0.1:{port}/x")
        waited = time.perf_counter() - started
        for filler in fillers:
            filler.close()
    assert isinstance(answer, EngineConnectTimeout)
    assert answer.status_code == 503
    assert CONNECT_S <= waited < CONNECT_S + 0.5


async def test_a_health_check_answered_during_a_loop_stall_is_not_a_timeout(
        engine_url: str) -> None:
    # The control path (health, models, metrics) has the same bound: an engine that
    # answered while the gateway's loop was busy past control_s is not marked down.
    control = AiohttpTransport(PoolSettings(), TimeoutSettings(control_s=CONNECT_S))
    try:
        url = engine_url.removesuffix("/x") + "/health"
        checks = [asyncio.create_task(control.get(url)) for _ in range(20)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        time.sleep(CONNECT_S * 2.5)  # noqa: ASYNC251 - the stall under test
        assert [status for status, _ in await asyncio.gather(*checks)] == [200] * 20
    finally:
        await control.aclose()


async def test_a_health_check_the_engine_does_not_answer_times_out_at_the_bound() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    control = AiohttpTransport(PoolSettings(), TimeoutSettings(control_s=CONNECT_S))
    try:
        port = server.sockets[0].getsockname()[1]
        started = time.perf_counter()
        with pytest.raises(EngineTimeout):
            await control.get(f"http://127.0.0.1:{port}/health")
        assert CONNECT_S <= time.perf_counter() - started < CONNECT_S + 0.5
    finally:
        await control.aclose()
        server.close()
