"""Opening a request on an engine: route, connect, read the first bytes; retry if allowed.

Only what happens before the client has seen a byte may be retried, and only when the
engine is at fault (unreachable, 5xx, broken before the first token) — never a 4xx,
which would fail the same way anywhere, and never a first-token timeout, which would
double an already long wait. Retries go to engines not yet tried, after a jittered
exponential backoff, and only while the retry budget allows: when the whole fleet is
failing, retries would multiply the load exactly when it hurts most.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from gateway.drain import Drain
from gateway.errors import (
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    NoHealthyEngine,
    SluiceError,
    UpstreamRejected,
)
from gateway.fleet_settings import ResilienceSettings
from gateway.metrics import GatewayMetrics
from gateway.routing.budget import RetryBudget
from gateway.routing.router import Router, RouteRequest
from gateway.services.engine_pool import EnginePool, EngineState

log = logging.getLogger("sluice.upstream")


@dataclass
class Attempt:
    """One open upstream request. ``stack`` closes it (and releases its lease)."""

    engine: EngineState
    stack: AsyncExitStack
    chunks: AsyncIterator[bytes]
    first: bytes


@dataclass
class Target:
    """Where a request goes: its model (and metrics label), routing input, path."""

    model: str
    label: str
    path: str
    route: RouteRequest
    engine: str = "none"
    """The engine of the latest attempt (for metrics and logs)."""


class Connector:
    def __init__(self, pool: EnginePool, router: Router, drain: Drain,
                 metrics: GatewayMetrics, settings: ResilienceSettings) -> None:
        self._pool = pool
        self._router = router
        self._drain = drain
        self._metrics = metrics
        self._settings = settings
        self._budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_s)

    async def open(self, target: Target, payload: bytes, tried: set[str]) -> Attempt:
        """The first bytes of an answer from some engine not in ``tried`` (updated)."""
        self._budget.record_request()
        last: SluiceError | None = None
        for attempt in range(self._settings.retries + 1):
            if attempt:
                if not self._budget.try_spend():
                    self._metrics.retry_budget_exhausted.labels(target.label).inc()
                    break
                self._metrics.retries.labels(target.label).inc()
                await asyncio.sleep(self._backoff(attempt))
            try:
                engine = self._pick(target, frozenset(tried))
            except NoHealthyEngine:
                if last is None:
                    raise
                break
            tried.add(engine.name)
            try:
                return await self._attempt(target, engine, payload)
            except SluiceError as exc:
                if not self.engine_failed(engine, exc):
                    raise
                log.warning("engine %s failed %s before the first byte: %s",
                            engine.name, target.model, exc.message)
                last = exc
        assert last is not None
        raise last

    def engine_failed(self, engine: EngineState, exc: SluiceError) -> bool:
        """Account ``exc`` to the engine; True when another engine may well succeed."""
        if isinstance(exc, UpstreamRejected):
            self._pool.record_success(engine)  # it answered; the request was at fault
            return False
        if isinstance(exc, EngineUnavailable):
            self._pool.mark_down(engine, exc)
            return True
        if isinstance(exc, EngineError):
            self._pool.record_failure(engine, exc)
            return not isinstance(exc, EngineTimeout)
        engine.breaker.release()
        return False

    def _pick(self, target: Target, exclude: frozenset[str]) -> EngineState:
        candidates = self._pool.candidates(target.model, exclude)
        decision = self._router.pick(target.route, candidates)
        engine = candidates[decision.index]
        engine.breaker.on_pick()
        self._metrics.routing_decisions.labels(
            target.label, decision.strategy, decision.reason).inc()
        target.engine = engine.name
        return engine

    async def _attempt(self, target: Target, engine: EngineState, payload: bytes) -> Attempt:
        stack = AsyncExitStack()
        try:
            stack.enter_context(self._pool.lease(engine))
            stream = await stack.enter_async_context(engine.client.stream(target.path, payload))
            token = self._drain.register(stream.close)
            stack.callback(self._drain.unregister, token)
            chunks = stream.chunks()
            first = await anext(chunks, b"")
        except BaseException as exc:
            await stack.aclose()
            if not isinstance(exc, SluiceError):
                engine.breaker.release()
            raise
        self._pool.record_success(engine)
        return Attempt(engine, stack, chunks, first)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base x 2^(attempt-1))]."""
        ceiling = min(self._settings.backoff_max_s,
                      self._settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)
