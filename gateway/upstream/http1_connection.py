"""One keep-alive HTTP/1.1 connection to an engine: an asyncio protocol that writes a
request and parses its response with httptools.

The body is kept as the chunks httptools hands over (de-chunked) until the reader takes
them all at once; while more than ``max_buffer`` bytes wait unread the socket is not read
(backpressure), so an engine faster than the client costs no more memory than that. A
body without ``Content-Length`` or chunked framing ends when the engine closes.
"""

from __future__ import annotations

import asyncio
from typing import cast

from httptools import HttpParserError, HttpResponseParser

from gateway.upstream.http1_pool import ConnectionPool, Key


class Broken(Exception):
    """The connection ended (or was closed) before the response did."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to an engine and the response it is reading."""

    def __init__(self, key: Key, pool: ConnectionPool[Connection], max_buffer: int) -> None:
        self.key = key
        self.idle_since = 0.0
        self.used = False
        """It carried a request before this one (the engine may have closed it since)."""
        self._pool = pool
        self._max_buffer = max_buffer
        self._parser = HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._start()

    def _start(self) -> None:
        self.status = 0
        self.received = False
        """A byte of the response arrived."""
        self.complete = False
        self.buffered = 0
        self.failure: str | None = None
        self._active = False
        self._headers_in = False
        self._interim = False
        self._framed = False
        self._keep_alive = False
        self._paused = False
        self._chunks: list[bytes] = []

    @property
    def alive(self) -> bool:
        return not self._lost and self._transport is not None \
            and not self._transport.is_closing()

    def reusable(self) -> bool:
        return self.complete and self._keep_alive and self.failure is None and self.alive

    def detach(self) -> bool:
        """The response is done with; whether the connection may carry another."""
        self._active = False
        return self.reusable()

    def send(self, request: bytes) -> None:
        """Write ``request``; a connection already lost fails in :meth:`head`."""
        assert self._transport is not None
        if self.used:
            self._start()
        self.used = self._active = True
        if self.failure is None:
            self._transport.write(request)

    def close(self) -> None:
        if self.failure is None:
            self.failure = "closed"
        if self._transport is not None:
            self._transport.close()
        self._wake()

    async def head(self) -> int:
        """The response's status, once its headers are in."""
        while not self._headers_in:
            if self.failure is not None:
                raise Broken(self.failure)
            await self._wait()
        return self.status

    async def read(self) -> bytes:
        """The body received so far, waiting for some; ``b""`` at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self.failure is not None:
                raise Broken(self.failure)
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        transport = self._transport
        if self._paused and transport is not None and not transport.is_closing():
            self._paused = False
            transport.resume_reading()
        return data

    async def _wait(self) -> None:
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._active:  # bytes nobody asked for: the connection is not usable
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except HttpParserError as exc:
            self.failure = f"bad HTTP from the engine ({type(exc).__name__})"
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if (self._active and exc is None and self.failure is None and self._headers_in
                and not self._framed and not self.complete):
            self.complete = True  # a body delimited by the connection's close
        elif self.failure is None:
            self.failure = type(exc).__name__ if exc is not None else "ServerDisconnected"
        if self._active:
            self._wake()
        else:
            self._pool.lost(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise Broken("the engine sent more than one response")
        self._framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._interim = self.status < 200  # e.g. 103 Early Hints: the answer follows
        if not self._interim:
            self._headers_in = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self._max_buffer and not self._paused:
            assert self._transport is not None
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            return
        self.complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()
