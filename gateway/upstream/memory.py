"""An in-memory transport: engines as Python functions, no sockets.

Tests of the client, connector, stream session and director script engine behaviour
with it (first bytes, a stream that breaks, a stall, a 5xx) and read back what was sent
and whether each response was closed finished or aborted. Timeouts are enforced exactly
as the real transport does, on the same :class:`StreamTimeouts`.

WebSockets (``connect``) go to ``sockets``: it gets a :class:`MemorySocket` for each
dial, plays the engine's side of it (or raises, as an engine that refuses or cannot be
reached), and the caller gets the other side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.errors import EngineError, EngineTimeout, EngineUnavailable, SluiceError
from gateway.upstream.transport import (
    GOING_AWAY,
    NO_HEADERS,
    Closed,
    EngineHeaders,
    StreamTimeouts,
)


@dataclass
class MemoryRequest:
    """One request a scripted engine received."""

    method: str
    url: str
    payload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    closed: bool = False
    aborted: bool = False
    """Closed before its body was read to the end (a real engine would abort it)."""

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class MemoryResponse:
    """A scripted answer: ``body`` is bytes, or chunks (an async iterable may sleep
    between them, or raise ``ConnectionResetError`` to break the stream)."""

    status: int = 200
    body: bytes | Iterable[bytes] | AsyncIterable[bytes] = b""


Handler = Callable[[MemoryRequest], Awaitable[MemoryResponse]]
"""Answers one request. Raise ``ConnectionRefusedError`` to play an unreachable engine."""


class MemorySocket:
    """Both ends of one WebSocket: the gateway's (:meth:`receive`, :meth:`send`,
    :meth:`close`, the :class:`~gateway.upstream.transport.UpstreamSocket` protocol) and
    the engine's (:meth:`to_client`, :meth:`from_client`, :meth:`hang_up`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        """What the gateway sent, in order; None once it closed."""
        self._inbox: asyncio.Queue[str | bytes | Closed] = asyncio.Queue()
        self.closed_with: int | None = None
        """The close code the gateway sent (None: still open)."""

    async def receive(self) -> str | bytes | Closed:
        return await self._inbox.get()

    async def send(self, data: str | bytes) -> None:
        if self.closed_with is None:
            self.sent.put_nowait(data)

    async def close(self, code: int = GOING_AWAY) -> None:
        if self.closed_with is None:
            self.closed_with = code
            self.sent.put_nowait(None)
            self._inbox.put_nowait(Closed(code))

    def to_client(self, data: str | bytes) -> None:
        """The engine sends one message."""
        self._inbox.put_nowait(data)

    async def from_client(self) -> str | bytes | None:
        """The next message the gateway sent; None once it closed."""
        return await self.sent.get()

    def hang_up(self, code: int) -> None:
        """The engine closes the socket with ``code``."""
        self._inbox.put_nowait(Closed(code))


SocketHandler = Callable[[MemorySocket], Awaitable[None]]
"""Accepts (returns) or refuses (raises: ``UpstreamRejected``, ``ConnectionRefusedError``)
one WebSocket; the engine side of an accepted one is played on ``socket`` afterwards."""


async def _iterate(body: bytes | Iterable[bytes] | AsyncIterable[bytes]
                   ) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        if body:
            yield body
    elif isinstance(body, AsyncIterable):
        async for chunk in body:
            yield chunk
    else:
        for chunk in body:
            yield chunk


class _Response:
    def __init__(self, request: MemoryRequest, response: MemoryResponse,
                 timeouts: StreamTimeouts | None, deadline: float) -> None:
        self._request = request
        self._response = response
        self._timeouts = timeouts
        self._deadline = deadline
        self._completed = False

    @property
    def status(self) -> int:
        return self._response.status

    async def chunks(self) -> AsyncIterator[bytes]:
        body = aiter(_iterate(self._response.body))
        first = True
        while True:
            bound = self._deadline - time.monotonic()
            stall = bound
            if self._timeouts is not None:
                stall = self._timeouts.first_byte_s if first else self._timeouts.between_reads_s
            try:
                async with asyncio.timeout(min(bound, stall)):
                    data = await anext(body)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                if bound <= stall:
                    raise EngineTimeout("the answer took longer than the gateway's total "
                                        "time limit", blames_engine=False) from exc
                raise EngineTimeout("engine stopped sending tokens (timeout)") from exc
            except (ConnectionError, EOFError) as exc:
                raise EngineError(f"engine stream broke: {type(exc).__name__}") from exc
            first = False
            if data:
                yield data
        self._completed = True

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        async for data in self.chunks():
            parts.append(data)
            if sum(map(len, parts)) > limit:
                raise EngineError(f"engine answer is larger than {limit} bytes")
        return b"".join(parts)

    def close(self) -> None:
        self._request.closed = True
        self._request.aborted = not self._completed


class MemoryTransport:
    """Routes every request to ``handler``; keeps each request for inspection."""

    def __init__(self, handler: Handler, sockets: SocketHandler | None = None) -> None:
        self.handler = handler
        self.sockets = sockets
        self.requests: list[MemoryRequest] = []
        self.dialed: list[MemorySocket] = []

    async def _call(self, request: MemoryRequest) -> MemoryResponse:
        self.requests.append(request)
        try:
            return await self.handler(request)
        except SluiceError:
            raise
        except (ConnectionError, OSError) as exc:
            raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc

    async def post(self, url: str, payload: bytes, headers: dict[str, str],
                   timeouts: StreamTimeouts, *, streamed: bool,
                   engine: EngineHeaders = NO_HEADERS) -> _Response:
        request = MemoryRequest("POST", url, payload, engine.merged(headers))
        deadline = time.monotonic() + timeouts.total_s
        response = await self._call(request)
        return _Response(request, response, timeouts if streamed else None, deadline)

    async def get(self, url: str, engine: EngineHeaders = NO_HEADERS) -> tuple[int, bytes]:
        request = MemoryRequest("GET", url, headers=dict(engine.items))
        response = await self._call(request)
        reader = _Response(request, response, None, time.monotonic() + 5.0)
        try:
            return response.status, await reader.read(1 << 24)
        finally:
            reader.close()

    async def connect(self, url: str, engine: EngineHeaders = NO_HEADERS) -> MemorySocket:
        socket = MemorySocket(url)
        self.dialed.append(socket)
        if self.sockets is None:
            raise EngineUnavailable("engine unreachable: no WebSocket handler")
        try:
            await self.sockets(socket)
        except SluiceError:
            raise
        except (ConnectionError, OSError) as exc:
            raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc
        return socket

    async def aclose(self) -> None:
        return None
