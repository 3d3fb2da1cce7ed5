"""The pure-ASGI response for relayed named events (``/v1/responses`` streams).

Unlike :class:`gateway.edge.streaming.SSEStreamResponse`, which frames JSON payloads as
``data:`` lines and ends with ``data: [DONE]``, this one writes events already framed
(``event:`` and ``data:`` lines, as the engine sent them) and adds nothing: a Responses
stream ends with its terminal event. Client disconnects are handled the same way, by a
:class:`~gateway.edge.streaming.ClientWatch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.edge.streaming import SERVER_SEND, SSE_HEADERS, ClientWatch


class EventStreamResponse(Response):
    """Sends ``head`` then ``body``; stops and closes the body when the client leaves.
    ``headers`` are added to the SSE ones."""

    def __init__(self, body: AsyncGenerator[list[bytes], None], watch: ClientWatch, *,
                 head: list[bytes] | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.background = None
        self.extra_headers = headers or []
        self.body_iterator = body
        self.watch = watch
        self.head = head or []
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": [*SSE_HEADERS, *self.extra_headers]})
            send = scope.get(SERVER_SEND, send)
            if self.head:
                await send({"type": "http.response.body", "body": b"".join(self.head),
                            "more_body": True})
            async for events in self.body_iterator:
                if events:
                    await send({"type": "http.response.body", "body": b"".join(events),
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.watch.absorb_cancel():
                raise
        finally:
            await self.watch.close()
            await self.body_iterator.aclose()
