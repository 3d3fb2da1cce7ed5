"""Opening a request on an engine: schedule, connect, read the first bytes; retry if allowed.

Only what happens before the client has seen a byte may be retried, and only when the
engine is at fault (unreachable, 5xx, a broken or malformed answer) — never a 4xx,
which would fail the same way anywhere, never a timeout, which would double an already
long wait, and not once the same fault has shown on ``max_same_failures`` engines (a
request that trips an engine bug would otherwise take every engine's breaker with it).
Retries go to engines not yet tried, after a jittered exponential backoff, and only
while the retry budget allows; continuations of broken streams draw from the same
budget, so one dead engine cannot set off a storm of them.

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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

from gateway.config.fleet import ResilienceSettings
from gateway.core.context import RequestContext
from gateway.core.errors import (
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    NoHealthyEngine,
    SluiceError,
    UpstreamRejected,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.budget import RetryBudget
from gateway.pipeline.drain import Drain
from gateway.upstream.pool import EnginePool, EngineState

log = logging.getLogger("sluice.upstream")


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

    async def open(self, ctx: RequestContext, payload: bytes, *, streamed: bool,
                   continuation: bool = False) -> Attempt:
        """The first bytes (or, not streamed, the whole answer) from an engine not yet
        tried for ``ctx``. A continuation is itself a retry: it needs the budget."""
        if continuation:
            self._spend(ctx)
        else:
            self.budget.record_request()
        last: SluiceError | None = None
        failures: dict[tuple[type[SluiceError], str], int] = {}
        for attempt in range(self._settings.retries + 1):
            if attempt:
                self._spend(ctx, last)
                self._metrics.retries.labels(ctx.label, ctx.version_label).inc()
                await asyncio.sleep(self._backoff(attempt))
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
                return await self._attempt(ctx, engine, payload, streamed)
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
        assert last is not None
        raise last

    def _spend(self, ctx: RequestContext, last: SluiceError | None = None) -> None:
        if not self.budget.try_spend():
            self._metrics.retry_budget_exhausted.labels(ctx.label, ctx.version_label).inc()
            raise last or EngineUnavailable("the retry budget is spent; not retrying")

    def engine_failed(self, engine: EngineState, exc: SluiceError) -> bool:
        """Account ``exc`` to the engine; True when another engine may well succeed."""
        if isinstance(exc, UpstreamRejected):
            self._pool.record_success(engine)  # it answered; the request was at fault
            return False
        if isinstance(exc, EngineUnavailable):
            self._pool.mark_down(engine, exc)
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
        except BaseException as exc:
            await stack.aclose()
            if not isinstance(exc, SluiceError):
                engine.breaker.release()
            raise
        self._pool.record_success(engine)
        self._scheduler.attempt_opened(ctx, engine)
        return Attempt(engine, stack, chunks, first)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base x 2^(attempt-1))]."""
        ceiling = min(self._settings.backoff_max_s,
                      self._settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)
