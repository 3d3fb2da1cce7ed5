"""What the engine client needs from HTTP, as two small protocols.

A transport sends one request to an engine and hands back an :class:`UpstreamResponse`
whose errors are already Sluice errors (:mod:`gateway.core.errors`): connection failures are
``EngineUnavailable``, timeouts ``EngineTimeout``, broken or oversized bodies
``EngineError``. Nothing above this seam sees a library's exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
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


class Transport(Protocol):
    """Sends requests to engines."""

    async def post(self, url: str, payload: bytes, headers: dict[str, str],
                   timeouts: StreamTimeouts, *, streamed: bool) -> UpstreamResponse:
        """Send a generation request; returns once the response headers are in."""
        ...

    async def get(self, url: str) -> tuple[int, bytes]:
        """A short control request (health, models, metrics) with the control timeout."""
        ...

    async def aclose(self) -> None: ...
