"""Opening a request on an engine: schedule, connect, read the first bytes; retry if allowed.

Only what happens before the client has seen a byte may be retried, and only when the
engine is at fault (unreachable or not accepting the connection in time, 5xx, a broken
or malformed answer) — never a 4xx, which would fail the same way anywhere, never a
timeout once the request was sent, which would double an already long wait, and not
once the same fault has shown on ``max_same_failures`` engines (a request that trips an
engine bug would otherwise take every engine's breaker with it).
Retries go to engines not yet tried, after a jittered exponential backoff, and only
while the retry budget allows; continuations of broken streams draw from the same
budget, so one dead engine cannot set off a storm of them.

An engine that answers a passthrough request with 404 for the path itself (not for a
model) does not have the endpoint: the client gets 404 ``unsupported_endpoint``, and
the engine is not blamed.

Every attempt carries the request's id as ``X-Request-Id`` (vLLM takes it as its own
request id, so engine logs and the gateway's name the same request); a retry or a
continuation carries the same id, to another engine (vLLM refuses an id only while it
runs the same one itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.config.fleet import ResilienceSettings
from gateway.core.context import RequestContext
from gateway.core.errors import (
    AdapterLoadFailed,
    EngineConnectTimeout,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    NoHealthyEngine,
    SluiceError,
    UnsupportedEndpoint,
    UpstreamRejected,
    echo,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.adapters import AdapterPlacer
from gateway.pipeline.budget import RetryBudget
from gateway.pipeline.drain import Drain
from gateway.upstream.pool import EnginePool, EngineState
from gateway.upstream.transport import UpstreamSocket

log = logging.getLogger("sluice.upstream")

T = TypeVar("T")


_ROUTE_MISSING = frozenset({"not found", "the engine rejected the request (http 404)"})
"""A 404's message when the path is unknown: vLLM's (FastAPI's ``Not Found``), or a
body that is no OpenAI error at all. A missing model's 404 names the model."""


def endpoint_missing(error: UpstreamRejected) -> bool:
    """Whether an engine's 4xx says it has no such path (rather than no such model)."""
    return error.status_code == 404 and (
        error.message.strip().lower().removeprefix("404: ") in _ROUTE_MISSING
        or error.error_type == "Not Found")


def unsupported(ctx: RequestContext, error: UpstreamRejected) -> UnsupportedEndpoint | None:
    """A passthrough path the engines lack, as the client is told it (None: the
    refusal is the engine's own, passed on)."""
    if ctx.endpoint.chunks or not endpoint_missing(error):
        return None
    return UnsupportedEndpoint(
        f"the engines serving '{echo(ctx.model)}' do not support {ctx.endpoint.path}")


class Scheduler(Protocol):
    """Picks the engine for an attempt (see :mod:`gateway.scheduling`)."""

    def schedule(self, ctx: RequestContext, engines: list[EngineState]) -> EngineState:
        """The engine for the next attempt; its breaker is told it was picked."""
        ...

    def attempt_opened(self, ctx: RequestContext, engine: EngineState) -> None: ...


@dataclass(slots=True)
class Attempt:
    """One open upstream request. ``stack`` closes it (and releases its lease)."""

    engine: EngineState
    stack: AsyncExitStack
    chunks: AsyncIterator[bytes]
    first: bytes
    """The first read of a stream; the whole answer when not streamed."""


@dataclass(slots=True)
class Dialed:
    """One open WebSocket to an engine; its owner closes ``socket``."""

    engine: EngineState
    socket: UpstreamSocket


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class Connector:
    def __init__(self, pool: EnginePool, scheduler: Scheduler, drain: Drain,
                 metrics: GatewayMetrics, settings: ResilienceSettings) -> None:
        self._pool = pool
        self._scheduler = scheduler
        self._drain = drain
        self._metrics = metrics
        self._settings = settings
        self.budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_s)
        self.adapters: AdapterPlacer | None = None
        """Puts a request's LoRA adapter on the engine picked, before the attempt."""

    async def open(self, ctx: RequestContext, payload: bytes, *, streamed: bool,
                   continuation: bool = False) -> Attempt:
        """The first bytes (or, not streamed, the whole answer) from an engine not yet
        tried for ``ctx``. A continuation is itself a retry: it needs the budget."""
        return await self._on_an_engine(
            ctx, lambda engine: self._attempt(ctx, engine, payload, streamed),
            continuation=continuation)

    async def dial(self, ctx: RequestContext, query: str) -> Dialed:
        """A WebSocket to the endpoint's path on an engine for ``ctx`` (``query`` passed
        on), with the same scheduling, retries and engine accounting as a request."""
        return await self._on_an_engine(ctx, lambda engine: self._dial(ctx, engine, query))

    async def _on_an_engine(self, ctx: RequestContext,
                            attempt: Callable[[EngineState], Awaitable[T]], *,
                            continuation: bool = False) -> T:
        """The one schedule-and-retry loop: ``attempt`` on the engine the scheduler picks,
        again on another (after a backoff, within the budget) while the failure says
        another may well succeed."""
        if continuation:
            self._spend(ctx)
        else:
            self.budget.record_request()
        last: SluiceError | None = None
        failures: dict[tuple[type[SluiceError], str], int] = {}
        for tries in range(self._settings.retries + 1):
            if tries:
                self._spend(ctx, last)
                self._metrics.retries.labels(ctx.label, ctx.version_label).inc()
                await asyncio.sleep(self._backoff(tries))
            try:
                engine = self._scheduler.schedule(ctx, self._pool.engines)
            except NoHealthyEngine:
                if last is None:
                    raise
                raise last from None
            ctx.tried.add(engine.name)
            ctx.engine = engine.name
            ctx.attempts += 1
            if ctx.timings.scheduled is None:
                ctx.timings.scheduled = time.perf_counter()
            try:
                opened = await self._with_adapter(ctx, engine, attempt)
            except UpstreamRejected as exc:
                self.engine_failed(engine, exc)
                missing = unsupported(ctx, exc)
                if missing is None:
                    raise
                raise missing from exc
            except SluiceError as exc:
                if not self.engine_failed(engine, exc):
                    raise
                log.warning("engine %s failed %s before the first byte: %s",
                            engine.name, ctx.model, exc.message)
                last = exc
                if isinstance(exc, EngineUnavailable):
                    continue  # an unreachable engine says nothing about the request
                kind = (type(exc), exc.message)
                failures[kind] = failures.get(kind, 0) + 1
                if failures[kind] >= self._settings.max_same_failures:
                    raise
            except BaseException:  # no verdict on the engine (cancelled): free its probe
                engine.breaker.release()
                raise
            else:
                self._pool.record_success(engine)
                self._scheduler.attempt_opened(ctx, engine)
                return opened
        assert last is not None
        raise last

    async def _with_adapter(self, ctx: RequestContext, engine: EngineState,
                            attempt: Callable[[EngineState], Awaitable[T]]) -> T:
        """``attempt``, once the request's adapter (if it names one) is on ``engine``.
        The adapter counts as in use there until the attempt's stack closes (a WebSocket:
        until the request's books close)."""
        placer = self.adapters
        if placer is None or ctx.lora is None:
            return await attempt(engine)
        prepared = await placer.prepare(ctx, engine)
        if prepared is None:
            return await attempt(engine)
        release: Callable[[], None] = prepared
        try:
            try:
                opened = await attempt(engine)
            except UpstreamRejected as exc:
                lora = ctx.lora
                if lora is None or exc.status_code != 404 or lora.name not in exc.message:
                    raise
                # Another replica unloaded it after this one saw it held: load it again.
                engine.cards.pop(lora.name, None)
                release()
                again = await placer.prepare(ctx, engine)
                assert again is not None
                release = again
                opened = await attempt(engine)
        except BaseException:
            release()
            raise
        if isinstance(opened, Attempt):
            opened.stack.callback(release)
        else:
            ctx.on_finish.append(release)
        return opened

    def _spend(self, ctx: RequestContext, last: SluiceError | None = None) -> None:
        if not self.budget.try_spend():
            self._metrics.retry_budget_exhausted.labels(ctx.label, ctx.version_label).inc()
            raise last or EngineUnavailable("the retry budget is spent; not retrying")

    def engine_failed(self, engine: EngineState, exc: SluiceError) -> bool:
        """Account ``exc`` to the engine; True when another engine may well succeed."""
        if isinstance(exc, UpstreamRejected):
            self._pool.record_success(engine)  # it answered; the request was at fault
            return False
        if isinstance(exc, EngineConnectTimeout):
            self._pool.record_failure(engine, exc)  # slow to accept: not known to be down
            return True
        if isinstance(exc, EngineUnavailable):
            self._pool.mark_down(engine, exc)
            return True
        if isinstance(exc, AdapterLoadFailed):
            engine.breaker.release()  # it serves all else; another may load the adapter
            return True
        if isinstance(exc, EngineTimeout):
            if exc.blames_engine:
                self._pool.record_failure(engine, exc)
            else:
                engine.breaker.release()
            return False
        if isinstance(exc, EngineError):
            self._pool.record_failure(engine, exc)
            return True
        engine.breaker.release()
        return False

    async def _attempt(self, ctx: RequestContext, engine: EngineState, payload: bytes,
                       streamed: bool) -> Attempt:
        stack = AsyncExitStack()
        try:
            stack.enter_context(self._pool.lease(engine))
            response = await stack.enter_async_context(
                engine.client.open(ctx.endpoint.path, payload, streamed=streamed,
                                   headers={"X-Request-Id": ctx.id}))
            if ctx.timings.connected is None:
                ctx.timings.connected = time.perf_counter()
            token = self._drain.register(response.close)
            stack.callback(self._drain.unregister, token)
            if streamed:
                chunks = response.chunks()
                first = await anext(chunks, b"")
            else:
                chunks = _nothing()
                first = await response.read(engine.client.max_answer_bytes)
                if not first.lstrip().startswith(b"{"):
                    raise EngineError("engine answered with a body that is not a JSON object")
        except BaseException:
            await stack.aclose()
            raise
        return Attempt(engine, stack, chunks, first)

    @staticmethod
    async def _dial(ctx: RequestContext, engine: EngineState, query: str) -> Dialed:
        socket = await engine.client.websocket(ctx.endpoint.path, query)
        if ctx.timings.connected is None:
            ctx.timings.connected = time.perf_counter()
        return Dialed(engine, socket)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base x 2^(attempt-1))]."""
        ceiling = min(self._settings.backoff_max_s,
                      self._settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)
