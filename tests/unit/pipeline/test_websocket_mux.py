"""The /v1/ws multiplexer over a director with scripted engines: each request ends with
exactly one terminal message, whatever the timing of a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from gateway.edge.websocket.mux import Multiplexer
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, usage


async def test_a_cancel_while_the_done_message_is_sent_adds_no_cancelled_message(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def engine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("Hi", finish="stop") + usage(1, 1) + DONE])

    rig.scripts.update(a=engine)
    sent: list[dict[str, object]] = []
    done_written = asyncio.Event()

    async def send(message: bytes) -> None:
        sent.append(orjson.loads(message))
        if sent[-1]["type"] == "done":  # written; the socket is slow to take more
            done_written.set()
            await asyncio.Event().wait()

    mux = Multiplexer(rig.director, rig.answer, send, socket_id="s", max_requests=4)
    await mux.text(orjson.dumps({"id": "r1", "type": "chat.completions",
                                 "body": {"model": "m", "messages": [
                                     {"role": "user", "content": "hi"}]}}).decode())
    await done_written.wait()
    await mux.text('{"id": "r1", "type": "cancel"}')
    await mux.close()
    assert [m["type"] for m in sent] == ["chunk", "done"]
