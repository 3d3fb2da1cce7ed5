"""A ``cancel`` frame on /v1/ws: the request's upstream stream is closed, then the
client is told ``cancelled``; no socket, the real director over a scripted engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.edge.websocket.mux import Multiplexer
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import Rig, chunk

START = orjson.dumps({"id": "r1", "type": "chat.completions", "body": {
    "model": "m", "messages": [{"role": "user", "content": "hi"}]}}).decode()


async def test_a_cancel_closes_the_upstream_stream_then_answers_cancelled(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def first_token_then_nothing() -> AsyncIterator[bytes]:
        yield chunk("", role=True) + chunk("Hi")
        await asyncio.Event().wait()  # the engine is still generating

    async def engine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, first_token_then_nothing())

    rig.scripts.update(a=engine)
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    upstream_aborted_when_told: list[bool] = []

    async def send(message: bytes) -> None:
        decoded = orjson.loads(message)
        if decoded["type"] == "cancelled":
            upstream_aborted_when_told.append(rig.sent_to("a")[0].aborted)
        sent.put_nowait(decoded)

    async def next_message() -> dict[str, Any] | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                return await sent.get()
        return None

    mux = Multiplexer(rig.director, rig.answer, send, socket_id="s", max_requests=4)
    try:
        await mux.text(START)
        head = [await next_message(), await next_message()]  # role, then "Hi"
        assert [m and m["type"] for m in head] == ["chunk", "chunk"]
        assert mux.in_flight == 1
        await mux.text('{"id": "r1", "type": "cancel"}')
        assert await next_message() == {"id": "r1", "type": "cancelled"}
        assert upstream_aborted_when_told == [True]  # closed first, then told
        upstream = rig.sent_to("a")[0]
        assert (upstream.closed, upstream.aborted) == (True, True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while mux.in_flight:  # noqa: ASYNC110 - the request's task ends on its own
                    await asyncio.sleep(0.005)
        assert mux.in_flight == 0  # its task is gone
        assert rig.sample("sluice_requests_total", model="m", version="none", engine="a",
                          endpoint="chat", status="499") == 1
        assert await rig.admission.in_flight("m") == 0
    finally:
        await mux.close()
    assert sent.empty()  # exactly one terminal message
