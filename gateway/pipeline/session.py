"""The stream session: one streamed answer, however many engines it takes.

It owns the upstream attempt, decodes and judges its events with the endpoint's relay
(:class:`~gateway.pipeline.relay.Relay` for OpenAI chunks,
:class:`~gateway.pipeline.event_relay.EventRelay` for ``/v1/responses`` events), and when
the engine breaks after the first byte it continues a chunk stream on another engine from
the transcript (:mod:`.failover`), or ends the stream with one error event. It yields
lists of events: the edge frames them, as SSE or as WebSocket messages. The first yield
is the head (possibly empty); errors before it are ordinary HTTP errors. A request that
starts early (SSE keep-alive) first yields an empty list at once, then the head; errors
before the head are then an error event too. When the session ends, however it ends, its
upstream is closed and ``on_end`` runs once with the context filled in.

A cacheable request's session is given its flight (``tap``): every batch it yields is
appended to it as is (one ``append`` per read), and the stream's usage chunk is kept
apart, sent last only when the client asked for usage (see :mod:`gateway.cache`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.config.fleet import ResilienceSettings
from gateway.core.context import RequestContext, Usage
from gateway.core.errors import EngineError, EngineTimeout, ShuttingDown, SluiceError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.connector import Attempt, Connector
from gateway.pipeline.drain import Drain
from gateway.pipeline.failover import continuation
from gateway.pipeline.relay import Relay

if TYPE_CHECKING:
    from gateway.cache.flights import Flight

log = logging.getLogger("sluice.session")

Events = AsyncGenerator[list[bytes], None]
OnEnd = Callable[[RequestContext, BaseException | None], Awaitable[None]]


class StreamRelay(Protocol):
    """What the session needs of a relay: events in, whole judged events out."""

    fault: EngineError | None
    """The engine sent something bad; the events before it were handed out."""

    @property
    def done(self) -> bool:
        """The stream ended as it should (``[DONE]``, a terminal event)."""
        ...

    @property
    def usage_event(self) -> bytes | None:
        """The stream's usage event, when it is kept apart from the others."""
        ...

    def feed(self, data: bytes) -> list[bytes]: ...

    def error_event(self, error: SluiceError) -> bytes:
        """The event that ends a stream that broke after its first byte."""
        ...

    @property
    def reported_usage(self) -> Usage | None: ...

    @property
    def tokens(self) -> int:
        """Output events delivered: what a stream cut before its usage is charged."""
        ...

    @property
    def complete(self) -> bool:
        """The answer ended whole (a cached stream is stored only then)."""
        ...

    def text(self, chars: int) -> str:
        """The first ``chars`` characters of choice 0's text, as delivered."""
        ...


class StreamSession:
    def __init__(self, ctx: RequestContext, payload: dict[str, Any], relay: StreamRelay,
                 connector: Connector, drain: Drain, metrics: GatewayMetrics,
                 settings: ResilienceSettings, on_end: OnEnd, *, usage_last: bool = False,
                 tap: Flight | None = None) -> None:
        self.ctx = ctx
        self._payload = payload
        self._connector = connector
        self._drain = drain
        self._metrics = metrics
        self._settings = settings
        self._on_end = on_end
        self._tap = tap
        self._usage_last = usage_last and tap is not None
        self.relay = relay

    async def run(self) -> Events:
        """Open the stream and yield its events (see the module docstring)."""
        ctx, relay, tap = self.ctx, self.relay, self._tap
        if ctx.start_early:
            try:
                yield []  # the response starts now; the head comes next
                attempt, head = await self._open()
            except SluiceError as exc:  # the client has the headers: an error event
                await self._on_end(ctx, exc)
                yield [relay.error_event(exc)]
                return
            except BaseException as exc:
                await self._on_end(ctx, exc)
                raise
        else:
            attempt, head = await self._open()
        error: BaseException | None = None
        try:
            last = ctx.timings.first_byte = time.perf_counter()
            per = self._metrics.version(ctx.label, ctx.version_label)
            per.ttft.observe(last - ctx.timings.arrived)
            if tap is not None and head:
                tap.append(head)
            yield head
            itl = per.itl
            data = b""  # the first read of a continuation, once there is one
            while True:
                try:
                    if data:
                        out = relay.feed(data)
                        if out:
                            if tap is not None:
                                tap.append(out)
                            yield out
                    if relay.fault is None:
                        async for data in attempt.chunks:
                            now = time.perf_counter()
                            itl.observe(now - last)
                            last = now
                            out = relay.feed(data)
                            if out:
                                if tap is not None:
                                    tap.append(out)
                                yield out
                            if relay.fault is not None:
                                break
                    if relay.fault is not None:
                        raise _taken(relay)
                    if not relay.done:
                        raise EngineError("engine closed the stream before it finished")
                    if tap is not None:
                        ctx.cache.complete = relay.complete
                        ctx.cache.usage_event = relay.usage_event
                        if self._usage_last and relay.usage_event is not None:
                            yield [relay.usage_event]
                    return
                except SluiceError as exc:
                    follow = await self._recover(attempt, exc)
                    if follow is None:
                        return
                    attempt, data = follow, follow.first
        except SluiceError as exc:
            error = exc
            yield [relay.error_event(exc)]
        except (asyncio.CancelledError, GeneratorExit) as exc:
            error = None if relay.done else exc  # gone after the end is not a disconnect
            raise
        except BaseException as exc:
            error = exc
            log.exception("stream of %s failed in the gateway", ctx.model)
            raise
        finally:
            await attempt.stack.aclose()
            ctx.usage = relay.reported_usage
            ctx.streamed_tokens = relay.tokens
            if ctx.keep_text:
                ctx.answer_text = relay.text(ctx.keep_text)
            await self._on_end(ctx, error)
            error = None  # its traceback holds this frame: no cycle left behind

    async def _open(self) -> tuple[Attempt, list[bytes]]:
        """An attempt (with the connector's retries) and its head."""
        attempt = await self._connector.open(self.ctx, orjson.dumps(self._payload),
                                             streamed=True)
        try:
            return attempt, await self._head(attempt)
        except BaseException:
            await attempt.stack.aclose()
            raise

    async def _head(self, attempt: Attempt) -> list[bytes]:
        """The first events, read until one is whole (or the stream ended well): the
        response starts only with them, so an engine that breaks before its first event
        (a partial or endless one, a page that is not SSE, an early end) is an ordinary
        HTTP error (502), charged to it."""
        relay = self.relay
        try:
            head = relay.feed(attempt.first)
            while not head and relay.fault is None and not relay.done:
                data = await anext(attempt.chunks, None)
                if data is None:
                    raise EngineError("engine closed the stream before its first event")
                head = relay.feed(data)
            if relay.fault is not None and not head:
                raise _taken(relay)
        except SluiceError as exc:
            self._connector.engine_failed(attempt.engine, exc)
            raise
        return head

    async def _recover(self, attempt: Attempt, cause: SluiceError) -> Attempt | None:
        """A new attempt that continues the broken stream, None when nothing was missing
        but the end, or raise when it cannot be continued (``cause``, or a new error from
        it).
        This frame lets go of ``cause`` as it leaves: a raised error's traceback holds
        the frame, and the frame holding the error would make a cycle."""
        try:
            ctx, failovers = self.ctx, self._metrics.failovers
            if self._drain.expired:
                raise ShuttingDown("the gateway shut down before the answer finished") from cause
            log.warning("stream from %s broke after the first byte: %s", attempt.engine.name,
                        cause.message)
            self._connector.engine_failed(attempt.engine, cause)
            await attempt.stack.aclose()
            if isinstance(cause, EngineTimeout) and not cause.blames_engine:
                failovers.labels(ctx.label, ctx.version_label, "error_event").inc()
                raise cause  # the request's own time is up: no engine gets more of it
            relay = self.relay
            if not isinstance(relay, Relay):  # named events (Responses): not continued
                failovers.labels(ctx.label, ctx.version_label, "error_event").inc()
                raise cause
            transcript = relay.transcript
            if transcript.finished and transcript.obstacle is None:
                failovers.labels(ctx.label, ctx.version_label, "completed").inc()
                return None
            follow: dict[str, Any] | str = "failover is off"
            if self._settings.failover and ctx.continuations < self._settings.max_failovers:
                follow = continuation(self._payload, transcript, chat=ctx.endpoint.chat)
            if isinstance(follow, str):
                log.warning("cannot continue the stream of %s: %s", ctx.model, follow)
                failovers.labels(ctx.label, ctx.version_label, "error_event").inc()
                raise cause
            try:
                new = await self._connector.open(ctx, orjson.dumps(follow), streamed=True,
                                                 continuation=True)
            except SluiceError as exc:
                failovers.labels(ctx.label, ctx.version_label, "error_event").inc()
                raise cause from exc
            ctx.continuations += 1
            relay.continue_from_here()
            failovers.labels(ctx.label, ctx.version_label, "continued").inc()
            log.info("stream of %s continued on %s after %d tokens", ctx.model, new.engine.name,
                     transcript.tokens)
            return new
        finally:
            del cause


def _taken(relay: StreamRelay) -> EngineError:
    """The relay's fault, no longer kept by it: raised, its traceback holds the frames
    that hold the relay, and the relay holding it would make a cycle that only a full
    garbage collection frees (with the request's body in it)."""
    fault = relay.fault
    assert fault is not None
    relay.fault = None
    return fault
