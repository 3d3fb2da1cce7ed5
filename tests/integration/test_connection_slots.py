"""Connection slots (``gateway/edge/protocol.py``, ``/v1/ws``), over raw sockets: a body
trickled past its deadline, the reserve that keeps ``/health`` and ``/ready`` answering
when every slot is held, the cap per client address, and WebSockets per key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import wait_until
from tests.integration.test_connection_limits import (
    WAIT_S,
    Conn,
    answer_then_close,
    head,
    send,
    status_of,
)

POST_HEAD = head("/v1/chat/completions", method="POST",
                 extra=b"Content-Type: application/json\r\nContent-Length: 1000\r\n")
"""An ordinary request whose body is still to come."""
OTHER_ADDRESS = "127.0.0.2"
"""Another client address on the loopback interface (Linux answers all of 127/8)."""


@asynccontextmanager
async def connect(gateway: str, source: str | None = None) -> AsyncIterator[Conn]:
    address = urlsplit(gateway)
    reader, writer = await asyncio.open_connection(
        address.hostname, address.port,
        local_addr=(source, 0) if source is not None else None)
    try:
        yield reader, writer
    finally:
        writer.close()


async def holding(stack: AsyncExitStack, gateway: str) -> Conn:
    """A connection holding a request: its head is in, its body never comes whole."""
    reader, writer = await stack.enter_async_context(connect(gateway))
    await send(writer, POST_HEAD + b'{"model": ')
    return reader, writer


async def status_on_new_connection(gateway: str, request: bytes,
                                   source: str | None = None) -> int:
    async with connect(gateway, source) as (reader, writer):
        await send(writer, request)
        return await status_of(reader)


async def test_a_body_trickled_past_its_deadline_is_408(start_gateway: StartGateway) -> None:
    """Each byte comes well within the per-byte timeout; the body as a whole does not."""
    gateway = await start_gateway(limits={"body_timeout_s": 0.5, "body_deadline_s": 1.0})
    async with connect(gateway) as (reader, writer):
        await send(writer, POST_HEAD)

        async def trickle() -> None:
            for _ in range(1000):  # 100 s of it, unless the gateway cuts it short
                await send(writer, b" ")
                await asyncio.sleep(0.1)

        trickler = asyncio.create_task(trickle())
        try:
            status, error = await answer_then_close(reader)
        finally:
            trickler.cancel()
    assert status == 408
    assert error["code"] == "request_timeout"
    assert "whole" in str(error["message"])


async def test_with_every_slot_held_health_and_ready_still_answer(
        start_gateway: StartGateway, start_sim: StartSim) -> None:
    """Two requests trickling their bodies and two idle WebSockets fill the limit: the
    probes are answered from the reserve, an ordinary request is refused."""
    sim = await start_sim()
    gateway = await start_gateway([sim], limits={"max_connections": 4})
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await holding(stack, gateway)
        sockets = await stack.enter_async_context(aiohttp.ClientSession())
        for _ in range(2):
            await stack.enter_async_context(sockets.ws_connect(gateway + "/v1/ws"))

        assert await status_on_new_connection(gateway, head("/health")) == 200
        assert await status_on_new_connection(gateway, head("/ready")) == 200
        async with connect(gateway) as (reader, writer):
            await send(writer, POST_HEAD)
            status, error = await answer_then_close(reader)
        assert status == 503
        assert error["code"] == "too_many_connections"
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await sockets.ws_connect(gateway + "/v1/ws")
        assert caught.value.status == 503


async def test_a_probe_from_the_reserve_is_answered_once_then_closed(
        start_gateway: StartGateway) -> None:
    gateway = await start_gateway(limits={"max_connections": 2})
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await holding(stack, gateway)
        async with connect(gateway) as (reader, writer):
            await send(writer, head("/health") + head("/health"))
            assert await status_of(reader) == 200
            async with asyncio.timeout(WAIT_S):
                assert await reader.read() == b""  # the pipelined second one is not read


async def test_one_address_cannot_hold_every_slot(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(limits={"max_connections": 16,
                                          "max_connections_per_address": 3})
    async with AsyncExitStack() as stack:
        held = [await holding(stack, gateway) for _ in range(3)]
        async with connect(gateway) as (reader, writer):
            await send(writer, POST_HEAD)
            status, error = await answer_then_close(reader)
        assert status == 503
        assert error["code"] == "too_many_connections"
        assert "address" in str(error["message"])
        # Its probes still answer, from the reserve; another address is not starved.
        assert await status_on_new_connection(gateway, head("/health")) == 200
        assert await status_on_new_connection(gateway, head("/v1/models"), OTHER_ADDRESS) \
            == 200

        held[0][1].close()  # a slot of its own comes back once one closes

        async def served() -> bool:
            return await status_on_new_connection(gateway, head("/v1/models")) == 200

        await wait_until(served, "the address's freed slot", timeout_s=WAIT_S)


async def test_v1_ws_sockets_are_capped_per_key(start_gateway: StartGateway,
                                                 sim_server: str) -> None:
    keys = ["sk-first-sockets-key-0123456789", "sk-other-sockets-key-0123456789"]
    gateway = await start_gateway([sim_server], api_keys=keys,
                                  websocket={"max_sockets_per_key": 2})
    url = gateway + "/v1/ws"
    first, other = ({"Authorization": f"Bearer {k}"} for k in keys)
    async with aiohttp.ClientSession() as sockets:
        held = [await sockets.ws_connect(url, headers=first) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await sockets.ws_connect(url, headers=first)
        assert caught.value.status == 429
        held.append(await sockets.ws_connect(url, headers=other))  # not starved
        await held.pop(0).close()

        async def reopened() -> bool:
            try:
                held.append(await sockets.ws_connect(url, headers=first))
            except aiohttp.WSServerHandshakeError:
                return False
            return True

        await wait_until(reopened, "the key's freed socket", timeout_s=WAIT_S)
        for socket in held:
            await socket.close()
