"""A pure-ASGI streaming response for relayed Server-Sent Events.

The body iterator yields bytes that are already SSE-framed (relayed from the engine
or produced by the gateway), so nothing is re-encoded per event. The response races
the body against the client's ``http.disconnect``: when the client leaves, the task
streaming the body is cancelled, which closes the upstream stream (and makes vLLM
abort the request) through the body generator's ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SSEStreamResponse(Response):
    """Streams ``body``; stops it (and closes it) as soon as the client disconnects."""

    def __init__(self, body: AsyncGenerator[bytes, None], *, head: bytes = b"",
                 status_code: int = 200) -> None:
        self.background = None
        self.body_iterator = body
        self.head = head
        self.status_code = status_code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.current_task()
        assert streamer is not None
        client_left = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    client_left.set()
                    streamer.cancel()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": SSE_HEADERS})
            if self.head:
                await send({"type": "http.response.body", "body": self.head, "more_body": True})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client_left.is_set():
                raise
            streamer.uncancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.body_iterator.aclose()
