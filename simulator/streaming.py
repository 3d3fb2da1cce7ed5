"""Streaming one response as server-sent events, with as few wake-ups and writes as possible.

Fast path: the engine step calls `SseStream.push` for every new token, which writes the
events as one HTTP chunk straight to the socket, so a token costs no task switch and one
`send`. The handler task only wakes when the stream ends, or when `push` declines (the
socket is backed up, the connection is closing, or a crash is armed): then it writes
everything produced since its last write in one `await response.write`, which also waits
for the socket to drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from simulator.engine import RequestState, SimEngine, SimRequest
from simulator.protocol import GenerationRequest

logger = logging.getLogger("simulator")

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
Crash = Callable[[], None]
PUSH_BUFFER_LIMIT = 64 * 1024
"""Above this many unsent bytes on the socket, `push` leaves writing to the handler."""


class Encoder(Protocol):
    """The wire format of one stream's events (chat and completion chunks, or the
    Responses API's named events)."""

    def opening(self) -> bytes: ...

    def tokens(self, parts: list[bytes], start: int, end: int, final: bool) -> None: ...

    def closing(self, completion_tokens: int) -> bytes: ...


class SseStream:
    """The SSE response of one streamed request."""

    __slots__ = ("_encoder", "_engine", "_generation", "_request", "_transport", "sent")

    def __init__(
        self,
        engine: SimEngine,
        generation: GenerationRequest,
        sim_request: SimRequest,
        encoder: Encoder,
    ) -> None:
        self._engine = engine
        self._generation = generation
        self._request = sim_request
        self._encoder = encoder
        self._transport: asyncio.Transport | None = None
        self.sent = 0
        """Tokens written so far."""

    async def serve(self, request: web.Request, crash: Crash) -> web.StreamResponse:
        """Send headers at once, then tokens as the engine produces them."""
        response = web.StreamResponse(headers=SSE_HEADERS)
        fast = request.version >= (1, 1) and request.transport is not None
        if fast:
            response.enable_chunked_encoding()
        await response.prepare(request)
        if fast:
            self._transport = request.transport
            self._request.sink = self.push
        try:
            await self._follow(response, crash)
        except ConnectionResetError:
            pass  # the client went away; the caller aborts the request
        finally:
            self._request.sink = None
        return response

    def push(self) -> bool:
        """Write the new tokens now (engine side); False asks the handler to do it."""
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > PUSH_BUFFER_LIMIT
            or self._engine.faults.crash_after_tokens is not None
        ):
            return False
        produced = self._request.produced
        payload = self._events(produced, produced >= self._request.max_tokens)
        transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))
        self._engine.tokens_delivered += produced - self.sent
        self.sent = produced
        return True

    async def _follow(self, response: web.StreamResponse, crash: Crash) -> None:
        sim_request, engine = self._request, self._engine
        event = sim_request.event
        while True:
            await event.wait()
            event.clear()
            state = sim_request.state
            if state is RequestState.ABORTED:
                return
            produced = sim_request.produced
            if produced > self.sent:
                crash_at = engine.faults.crash_after_tokens
                if (
                    crash_at is not None
                    and engine.tokens_delivered + produced - self.sent >= crash_at
                ):
                    allowed = max(0, crash_at - engine.tokens_delivered)
                    if allowed:
                        await response.write(self._events(self.sent + allowed, final=False))
                        engine.tokens_delivered += allowed
                    crash()
                    return
                finished = state is RequestState.FINISHED
                data = self._events(produced, finished)
                engine.tokens_delivered += produced - self.sent
                self.sent = produced
                await response.write(data)
            if state is RequestState.FINISHED:
                return

    def _events(self, upto: int, final: bool) -> bytes:
        """The events for tokens `sent..upto-1`; the opening first, the closing if final."""
        encoder, sent = self._encoder, self.sent
        parts = [encoder.opening()] if sent == 0 else []
        encoder.tokens(parts, sent, upto, final)
        if final:
            parts.append(encoder.closing(upto))
        return b"".join(parts)
