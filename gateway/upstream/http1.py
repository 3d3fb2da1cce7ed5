"""The production transport: generation POSTs on a small HTTP/1.1 client of its own.

aiohttp's client request path (session, request and response objects, stream writer and
reader) cost a quarter to a third of the gateway's CPU per short stream (profiled). The
POST that carries a generation is the hot path, so it goes over
:class:`~gateway.upstream.http1_connection.Connection` (asyncio protocol, httptools
parser) from a keep-alive pool per engine (:mod:`gateway.upstream.http1_pool`). The cold
requests (health, models, metrics, ``/version``, WebSockets) stay on the
:class:`~gateway.upstream.aiohttp_transport.AiohttpTransport` this transport owns.

Translations are that transport's: unreachable -> ``EngineUnavailable``; a connection
not accepted within ``connect_s`` -> ``EngineConnectTimeout`` (nothing was sent: another
engine may take it); no answer or no first byte in time, or a stall -> ``EngineTimeout``;
the total bound ->
``EngineTimeout(blames_engine=False)``; a broken body -> ``EngineError``. Bounds: the
first byte of a stream by ``first_byte_s`` (one timer), later reads and the total by the
:class:`Watchdog`; a non-streamed answer by ``total_s`` from the start (one timer).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from gateway.config.connections import WebSocketSettings
from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.core.errors import (
    EngineConnectTimeout,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
)
from gateway.upstream.aiohttp_transport import AiohttpTransport
from gateway.upstream.http1_connection import Broken, Connection
from gateway.upstream.http1_pool import ConnectionPool, Key
from gateway.upstream.transport import NO_HEADERS, EngineHeaders, StreamTimeouts
from gateway.upstream.watchdog import Watchdog
from gateway.upstream.websocket import EngineSocket

_TOTAL = "the answer took longer than the gateway's total time limit"
_STALL = "engine stopped sending tokens (timeout)"
_NO_ANSWER = "engine did not answer in time"
_NO_FIRST = "engine sent no first token in time"
_MAX_BUFFER = 1024 * 1024
_URLS = 256
"""How many parsed URLs a transport keeps (engines times paths: a handful)."""

Target = tuple[Key, str, str]
"""The pool key, the request target (path and query) and the ``Host`` header."""


class _Stale(Exception):
    """A reused connection ended before any byte of the answer."""


class Http1Response:
    """One engine response on a pooled connection."""

    __slots__ = ("_connection", "_expired", "_pool", "_timer", "_watchdog",
                 "between_reads_s", "deadline", "last_read", "status")

    def __init__(self, connection: Connection, pool: ConnectionPool[Connection],
                 watchdog: Watchdog, timeouts: StreamTimeouts, started: float, *,
                 streamed: bool) -> None:
        self._connection: Connection | None = connection
        self._pool = pool
        self._watchdog = watchdog
        self._expired: str | None = None
        self.status = 0
        self.between_reads_s = timeouts.between_reads_s
        self.deadline = started + timeouts.total_s
        self.last_read = started
        # One timer until the first byte of a stream (then the watchdog), or until the
        # end of a non-streamed answer.
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None
        if streamed and loop.time() + timeouts.first_byte_s < self.deadline:
            self._timer = loop.call_later(timeouts.first_byte_s, self.expire, "first")
        else:
            self._timer = loop.call_at(self.deadline, self.expire, "total")

    def expire(self, reason: str) -> None:
        """Close the connection: ``first`` byte, ``stall`` or ``total`` bound passed."""
        self._expired = reason
        if self._connection is not None:
            self._connection.close()

    @property
    def expired(self) -> str | None:
        """Which bound closed the connection, if one did."""
        return self._expired

    def _timeout(self) -> EngineTimeout:
        if self._expired == "total":
            return EngineTimeout(_TOTAL, blames_engine=False)
        return EngineTimeout(_NO_FIRST if self._expired == "first" else _STALL)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            data = await self._read()
            self._stop_timer()  # later reads: the watchdog, not a timer per read
            self._watchdog.track(self)
            loop = asyncio.get_running_loop()
            while data:
                self.last_read = loop.time()
                yield data
                data = await self._read()
        except Broken as exc:
            if self._expired is not None:
                raise self._timeout() from exc
            raise EngineError(f"engine stream broke: {exc}") from exc
        finally:
            self._watchdog.untrack(self)

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            while data := await self._read():
                size += len(data)
                if size > limit:
                    raise EngineError(f"engine answer is larger than {limit} bytes")
                parts.append(data)
        except Broken as exc:
            if self._expired == "total":
                raise EngineTimeout(_TOTAL, blames_engine=False) from exc
            if self._expired is not None:
                raise EngineTimeout(_STALL) from exc
            raise EngineError(f"engine answer broke: {exc}") from exc
        self._stop_timer()
        return b"".join(parts)

    async def _read(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise Broken("the response was closed")
        return await connection.read()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Give a complete response's connection back to the pool, else close it (the
        engine sees the close and aborts the request)."""
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        self._stop_timer()
        self._watchdog.untrack(self)
        self._pool.release(connection, reuse=connection.detach())


class Http1Transport:
    """Generation requests on pooled HTTP/1.1 connections; the rest on aiohttp."""

    def __init__(self, pool: PoolSettings, timeouts: TimeoutSettings,
                 websocket: WebSocketSettings | None = None, *,
                 max_buffer: int = _MAX_BUFFER, idle_s: float = 30.0) -> None:
        self._control = AiohttpTransport(pool, timeouts, websocket)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self._open, max_total=pool.max_connections,
            max_per_engine=pool.max_connections_per_engine, idle_s=idle_s)
        bound = min(timeouts.between_tokens_s, timeouts.total_s)
        self._watchdog = Watchdog(interval_s=min(1.0, max(0.01, bound / 10)))
        self._max_buffer = max_buffer
        self._targets: dict[str, Target] = {}
        self._tls: ssl.SSLContext | None = None

    async def _open(self, key: Key) -> Connection:
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: Connection(key, self._pool, self._max_buffer), host, port,
            ssl=self._tls if tls else None)
        return connection

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            key = (parts.hostname or "", parts.port or (443 if tls else 80), tls)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            target = (key, path, parts.netloc.rpartition("@")[2])
            if len(self._targets) >= _URLS:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def post(self, url: str, payload: bytes, headers: dict[str, str],
                   timeouts: StreamTimeouts, *, streamed: bool,
                   engine: EngineHeaders = NO_HEADERS) -> Http1Response:
        started = asyncio.get_running_loop().time()
        key, path, host = self._target(url)
        request = _request(path, host, headers, payload, engine.block)
        try:
            return await self._send(key, request, timeouts, started, streamed, first=True)
        except _Stale:
            self._pool.drop_idle(key)
            return await self._send(key, request, timeouts, started, streamed, first=False)

    async def _send(self, key: Key, request: bytes, timeouts: StreamTimeouts,
                    started: float, streamed: bool, *, first: bool) -> Http1Response:
        try:
            connection = await self._pool.acquire(key, timeouts.connect_s)
        except TimeoutError as exc:  # nothing was sent: another engine may take it
            raise EngineConnectTimeout("engine did not accept the connection in time") from exc
        except OSError as exc:
            raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc
        reused = connection.used
        response = Http1Response(connection, self._pool, self._watchdog, timeouts, started,
                                 streamed=streamed)
        try:
            connection.send(request)
            response.status = await connection.head()
        except Broken as exc:
            response.close()
            if response.expired == "total":
                raise EngineTimeout(_TOTAL, blames_engine=False) from exc
            if response.expired is not None:
                raise EngineTimeout(_NO_ANSWER) from exc
            # A kept-alive connection the engine closed as it was reused (its keep-alive
            # timer fired as the request left): the request never reached the engine,
            # so a fresh connection may carry it, once.
            if first and reused and not connection.received:
                raise _Stale from exc
            raise EngineUnavailable(f"engine unreachable: {exc}") from exc
        except BaseException:
            response.close()
            raise
        return response

    async def get(self, url: str, engine: EngineHeaders = NO_HEADERS) -> tuple[int, bytes]:
        return await self._control.get(url, engine)

    async def connect(self, url: str, engine: EngineHeaders = NO_HEADERS) -> EngineSocket:
        return await self._control.connect(url, engine)

    async def aclose(self) -> None:
        await self._watchdog.aclose()
        await self._pool.aclose()
        await self._control.aclose()


def _request(path: str, host: str, headers: dict[str, str], payload: bytes,
             preset: bytes = b"") -> bytes:
    """The request head and body as one buffer, for one write; ``preset``: header lines
    encoded once (the engine's own, :class:`EngineHeaders`)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError("a header name or value holds a line break")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{lines}"
    return b"".join((head.encode(), preset,
                     f"Content-Length: {len(payload)}\r\n\r\n".encode(), payload))
