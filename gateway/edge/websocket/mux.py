"""One ``/v1/ws`` socket: many generation requests at once, each its own task.

The socket's reader turns frames into actions (:mod:`.messages`): a request starts a
task that runs it through the director's run with the engine answer step, streaming
forced on, and sends its events as
tagged messages (a model alias is resolved as over HTTP, pinned by the frame's
``version`` or the handshake's ``x-sluice-version``; ``done`` names the version); a
cancel cancels that task, which closes the upstream stream (the engine sees the
connection close and aborts). The key the socket was opened with is checked again at
every request (from what this replica knows of revocations, its own and those other
replicas publish): once it is revoked, that request gets a 401 error and the socket is
closed (1008), its other requests cancelled. At most ``max_requests`` run at once per socket; past
that a request is refused with ``too_many_requests``. When the socket closes, every
request still running is cancelled the same way and awaited, so no upstream stream
outlives its socket.

Sends need no lock: the server writes each message whole, and a client that stops
reading holds every task at its next send (the transport's flow control), never a
queue in the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from itertools import count

from gateway.core.context import RequestContext
from gateway.core.errors import AuthenticationFailed, Overloaded, SluiceError, echo
from gateway.edge.websocket.messages import (
    Cancel,
    FrameError,
    Start,
    Tagged,
    is_error_event,
    read_frame,
)
from gateway.keys import ApiKey
from gateway.observability.logs import REQUEST_ID
from gateway.pipeline.director import AnswerStep, Director, StartedStream

log = logging.getLogger("sluice.websocket")

Send = Callable[[bytes], Awaitable[None]]
"""Sends one text message (UTF-8 JSON bytes) on the socket."""


class SocketClosed(Exception):
    """The socket can no longer be written to."""


class KeyRevoked(SocketClosed):
    """The socket's API key was revoked: the request that found it was told, and the
    socket is to be closed (1008), its other requests cancelled."""


class Multiplexer:
    """The requests of one socket (see the module docstring)."""

    def __init__(self, director: Director, answer: AnswerStep, send: Send, *, socket_id: str,
                 max_requests: int, session_key: str | None = None,
                 principal: str | None = None, key: ApiKey | None = None,
                 pinned_version: str | None = None, client: str | None = None) -> None:
        self._director = director
        self._client = client
        self._answer = answer
        self._pinned_version = pinned_version
        self._principal = principal
        self._key = key
        self._send = send
        self._socket_id = socket_id
        self._max_requests = max_requests
        self._session_key = session_key
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ending: set[str] = set()
        """Requests whose terminal message is being sent: a cancel comes too late."""
        self._serial = count(1)
        self._when_idle: Callable[[], None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def end_when_idle(self, end: Callable[[], None]) -> None:
        """The gateway drains: call ``end`` once no request runs (at once if none does).
        Requests that come meanwhile are refused (the director's drain check)."""
        self._when_idle = end
        if not self._tasks:
            end()

    async def text(self, text: str) -> None:
        """Act on one text frame."""
        try:
            action = read_frame(text)
        except FrameError as exc:
            await self._send(Tagged(exc.request_id).error(exc))
            return
        if isinstance(action, Cancel):
            task = self._tasks.get(action.id)
            if task is not None and action.id not in self._ending:
                task.cancel()  # else it ended, or its terminal message is going out
            return
        if action.id in self._tasks:
            await self._send(Tagged(None).error(FrameError(
                f"request '{echo(action.id)}' is already in flight; use another id",
                param="id", code="duplicate_id")))
            return
        if self._key is not None and self._director.key_revoked(self._key):
            await self._send(Tagged(action.id).error(
                AuthenticationFailed("API key has been revoked", key_sent=True)))
            raise KeyRevoked
        if len(self._tasks) >= self._max_requests:
            refusal = Overloaded(f"this socket already runs {self._max_requests} "
                                 "requests; wait for one to end or open another socket")
            refusal.code = "too_many_requests"
            await self._send(Tagged(action.id).error(refusal))
            return
        self._start(action)

    async def binary(self) -> None:
        await self._send(Tagged(None).error(FrameError(
            "binary messages are not supported; send JSON text", code="binary_message")))

    def _start(self, start: Start) -> None:
        task = asyncio.create_task(self._run(start),
                                   name=f"ws-{self._socket_id}-{start.id}")
        self._tasks[start.id] = task
        task.add_done_callback(lambda done: self._ended(start.id, done))

    def _ended(self, request_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]
            self._ending.discard(request_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("websocket request %s failed", request_id, exc_info=task.exception())
        if self._when_idle is not None and not self._tasks:
            self._when_idle()

    async def close(self) -> None:
        """Cancel every request still running and wait until each has closed upstream."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, start: Start) -> None:
        tagged = Tagged(start.id)
        ctx = RequestContext.new(f"{self._socket_id}-{next(self._serial)}", start.endpoint,
                                 start.body, session_key=self._session_key,
                                 principal=self._principal, key=self._key)
        ctx.pinned_version = start.version or self._pinned_version
        ctx.client = self._client
        REQUEST_ID.set(ctx.id)  # this task's log lines
        try:
            await self._stream(start.id, ctx, tagged)
        except asyncio.CancelledError:
            # A cancel from the client (the socket still open) is answered; a closed
            # socket's cancel finds nobody to tell, nor does one that came while the
            # request's terminal message was going out.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if start.id not in self._ending:
                await self._send_quietly(tagged.cancelled())
        except SocketClosed:
            pass
        except SluiceError as exc:
            await self._send_quietly(tagged.error(exc))
        except Exception:
            log.exception("websocket request %s failed in the gateway", start.id)
            await self._send_quietly(tagged.error(SluiceError("internal gateway error")))

    async def _stream(self, request_id: str, ctx: RequestContext, tagged: Tagged) -> None:
        result = await self._director.run(ctx, self._answer)
        assert isinstance(result, StartedStream)  # streaming is forced on
        try:
            for payload in result.head:
                await self._emit(tagged, payload)
            async for events in result.body:
                for payload in events:
                    if is_error_event(payload):
                        await self._end(request_id, tagged.error_payload(payload))
                        return
                    await self._emit(tagged, payload)
        finally:
            await result.body.aclose()
        usage = ctx.usage
        await self._end(request_id, tagged.done(None if usage is None else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }, None if ctx.cache.key is None else ctx.cache.result, version=ctx.version,
            fallback_from=ctx.fallback_from))

    async def _end(self, request_id: str, message: bytes) -> None:
        """Send a request's terminal message (done, or its stream's error event)."""
        self._ending.add(request_id)
        await self._send(message)

    async def _emit(self, tagged: Tagged, payload: bytes) -> None:
        await self._send(tagged.chunk(payload))

    async def _send_quietly(self, message: bytes) -> None:
        with contextlib.suppress(SocketClosed):
            await self._send(message)
