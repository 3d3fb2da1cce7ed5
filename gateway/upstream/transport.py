"""What the engine client needs from HTTP, as two small protocols.

A transport sends one request to an engine and hands back an :class:`UpstreamResponse`
whose errors are already Sluice errors (:mod:`gateway.core.errors`): connection failures are
``EngineUnavailable``, timeouts ``EngineTimeout``, broken or oversized bodies
``EngineError``; or it opens a WebSocket to an engine (vLLM's ``/v1/realtime``) and hands
back an :class:`UpstreamSocket`, its handshake's errors translated the same way (a 4xx
refusal is ``UpstreamRejected``). Nothing above this seam sees a library's exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """Bounds for one generation request, in seconds (none may be unbounded).

    A streamed answer is bounded by ``first_byte_s`` until its first bytes, then by
    ``between_reads_s`` between reads, and by ``total_s`` overall; a non-streamed answer
    (the engine sends it whole when done) by ``total_s`` alone.
    """

    connect_s: float
    first_byte_s: float
    between_reads_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class EngineHeaders:
    """Headers sent on every request to one engine (its API key, the operator's extras),
    built once: ``block`` is them encoded as HTTP/1.1 header lines for the hot path.
    Neither field is in the ``repr`` (the key must never reach a log)."""

    items: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    block: bytes = field(default=b"", repr=False)

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> EngineHeaders:
        """``headers`` checked (no line breaks: they would split the request) and
        encoded."""
        items = tuple(headers.items())
        for name, value in items:
            if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
                raise ValueError(f"header {name!r}: a line break, NUL or colon in it")
        block = "".join(f"{name}: {value}\r\n" for name, value in items)
        return cls(items, block.encode("latin-1"))

    def merged(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` with these added (these win)."""
        return {**headers, **dict(self.items)} if self.items else dict(headers)


NO_HEADERS = EngineHeaders()


class UpstreamResponse(Protocol):
    """One engine response. The owner calls :meth:`close` exactly once, always."""

    @property
    def status(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; the first read waits for prefill, later ones do not."""
        ...

    async def read(self, limit: int) -> bytes:
        """The whole body; ``EngineError`` when it is longer than ``limit`` bytes."""
        ...

    def close(self) -> None:
        """Release a finished response for reuse; drop an unfinished one (the engine
        sees the connection close and aborts the request)."""
        ...


GOING_AWAY = 1001
BAD_GATEWAY = 1014
"""RFC 6455 close code: the gateway's upstream failed."""
MESSAGE_TOO_BIG = 1009
_SENDABLE = range(1000, 5000)
_RESERVED = frozenset({1004, 1005, 1006, 1015})
"""Close codes that must never be sent in a close frame (RFC 6455 §7.4.1)."""


def sendable_close_code(code: int | None, fallback: int) -> int:
    """``code`` when it may be sent in a close frame, else ``fallback``."""
    if code is None or code not in _SENDABLE or code in _RESERVED:
        return fallback
    return code


@dataclass(frozen=True, slots=True)
class Closed:
    """The engine's socket closed; ``code`` is what it sent (or what the transport saw:
    1009 for a message over the size limit, 1014 for a failure)."""

    code: int


class UpstreamSocket(Protocol):
    """One open WebSocket to an engine. The owner calls :meth:`close`, always."""

    async def receive(self) -> str | bytes | Closed:
        """The next message, or :class:`Closed` once the socket is closed."""
        ...

    async def send(self, data: str | bytes) -> None:
        """Send one message; a socket already closed drops it (its close is coming)."""
        ...

    async def close(self, code: int = GOING_AWAY) -> None: ...


class Transport(Protocol):
    """Sends requests to engines."""

    async def post(self, url: str, payload: bytes, headers: dict[str, str],
                   timeouts: StreamTimeouts, *, streamed: bool,
                   engine: EngineHeaders = NO_HEADERS) -> UpstreamResponse:
        """Send a generation request; returns once the response headers are in.
        ``engine``: the engine's own headers, sent after ``headers``."""
        ...

    async def get(self, url: str, engine: EngineHeaders = NO_HEADERS) -> tuple[int, bytes]:
        """A short control request (health, models, metrics) with the control timeout."""
        ...

    async def connect(self, url: str, engine: EngineHeaders = NO_HEADERS) -> UpstreamSocket:
        """Open a WebSocket to ``url`` (``ws://``); returns once the engine accepted it."""
        ...

    async def aclose(self) -> None: ...
