"""The upstream connect bound (the HTTP/1.1 client's pool): a busy gateway loop does not
trip it, an engine that does not accept still does, as ``EngineConnectTimeout``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import EngineConnectTimeout, EngineError
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
