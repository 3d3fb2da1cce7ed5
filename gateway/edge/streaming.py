"""Client-disconnect handling and the pure-ASGI response for relayed Server-Sent Events.

A :class:`ClientWatch` is started as soon as the request body has been read and lives
until the response ends: when the client disconnects (while the request waits for its
first token, or mid-stream), the task serving the request is cancelled. That closes the
upstream stream through the body generator's ``finally``, and vLLM aborts the request.

The stream's body yields lists of events, as the stream session judged them; this
response writes each list in one write. OpenAI chunk streams (chat, completions) yield
event payloads (JSON bytes), framed here as ``data:`` events and ended with
``data: [DONE]``; a ``/v1/responses`` stream yields events already framed (``event:``
and ``data:`` lines, as the engine sent them), written as they are and ended by its
own terminal event. The response start goes through every middleware (they add
headers and note the status); the body chunks that follow go straight to the server's
own ``send`` when the app left it in the scope (:data:`SERVER_SEND`): no middleware
rewrites a streamed body, and skipping their wrappers was measured to save about 8 % of
the gateway's CPU per relayed chunk.

SSE keep-alive: a stream that started before its head was known (``keepalive_s`` > 0)
gets a ``: ping`` comment every ``keepalive_s`` while it waits for that head, so that a
proxy's idle timeout does not cut a long queue wait. Only that wait is watched (its events
are awaited in a task, raced against the interval); the events after the head go the
usual way, with nothing added per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
SERVER_SEND = "sluice.server_send"
"""Scope key of the server's own ``send`` (set by the app, see :mod:`gateway.app`)."""
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientWatch:
    """Cancels the current task when the client sends ``http.disconnect``."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.client_left = False
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_left = True
                self._task.cancel()
                return

    def absorb_cancel(self) -> bool:
        """In an ``except CancelledError``: True (and the cancel undone) if it was ours."""
        if not self.client_left:
            return False
        self._task.uncancel()
        return True

    async def close(self) -> None:
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher


class SSEStreamResponse(Response):
    """Sends ``head`` then ``body``; stops and closes the body when the client leaves.
    ``headers`` are added to the SSE ones. ``framed``: the events come framed (a
    Responses stream): written as they are, with no ``[DONE]``. With ``keepalive_s`` the
    body's first events may take long: a ping goes out every ``keepalive_s`` until they
    come."""

    def __init__(self, body: AsyncGenerator[list[bytes], None], watch: ClientWatch, *,
                 head: list[bytes] | None = None, status_code: int = 200,
                 headers: list[tuple[bytes, bytes]] | None = None,
                 keepalive_s: float = 0.0, framed: bool = False) -> None:
        self.background = None
        self.body_iterator = body
        self.watch = watch
        self.head = head or []
        self.status_code = status_code
        self.extra_headers = headers or []
        self.keepalive_s = keepalive_s
        self.frame = b"".join if framed else sse_frame
        self.end = b"" if framed else DONE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frame = self.frame
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": [*SSE_HEADERS, *self.extra_headers]})
            send = scope.get(SERVER_SEND, send)
            if self.head:
                await send({"type": "http.response.body", "body": frame(self.head),
                            "more_body": True})
            if self.keepalive_s:
                first = await self._pinging(send)
                if first:
                    await send({"type": "http.response.body", "body": frame(first),
                                "more_body": True})
            async for events in self.body_iterator:
                if events:
                    await send({"type": "http.response.body", "body": frame(events),
                                "more_body": True})
            await send({"type": "http.response.body", "body": self.end, "more_body": False})
        except asyncio.CancelledError:
            if not self.watch.absorb_cancel():
                raise
        finally:
            await self.watch.close()
            await self.body_iterator.aclose()

    async def _pinging(self, send: Send) -> list[bytes] | None:
        """The body's next events (None when it ended), with a ping every
        ``keepalive_s`` while they take. Leaving early cancels the wait for them."""
        async def next_events() -> list[bytes] | None:
            return await anext(self.body_iterator, None)

        pending = asyncio.create_task(next_events())
        try:
            while True:
                done, _ = await asyncio.wait((pending,), timeout=self.keepalive_s)
                if done:
                    return pending.result()
                await send({"type": "http.response.body", "body": PING, "more_body": True})
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait((pending,))
                if not pending.cancelled():
                    pending.exception()  # retrieved: the request's error is already told


def sse_frame(payloads: list[bytes]) -> bytes:
    """Event payloads as SSE bytes: ``data: <payload>`` and a blank line each."""
    return b"data: " + b"\n\ndata: ".join(payloads) + b"\n\n"
