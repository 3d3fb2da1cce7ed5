"""The engines behind the gateway: health, what each serves, and in-flight counts."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engines.client import EngineClient
from gateway.errors import ModelNotFound, NoHealthyEngine, SluiceError
from gateway.metrics import GatewayMetrics
from gateway.settings import EngineConfig, TimeoutSettings

log = logging.getLogger("sluice.engines")


@dataclass
class EngineState:
    """What the gateway knows about one engine right now."""

    client: EngineClient
    healthy: bool = False
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    in_flight: int = 0
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.client.name


class EnginePool:
    """Tracks every engine and picks one for a model.

    The pick is the least-loaded healthy engine serving the model (by the gateway's own
    exact in-flight count), ties broken round-robin.
    """

    def __init__(self, configs: list[EngineConfig], session: aiohttp.ClientSession,
                 timeouts: TimeoutSettings, metrics: GatewayMetrics,
                 health_interval_s: float) -> None:
        self._engines = [
            EngineState(EngineClient(c.name, c.base_url, session, timeouts)) for c in configs
        ]
        self._metrics = metrics
        self._interval = health_interval_s
        self._turn = itertools.count()
        self._ready = asyncio.Event()

    @property
    def engines(self) -> list[EngineState]:
        return list(self._engines)

    @property
    def ready(self) -> bool:
        return any(e.healthy and e.cards for e in self._engines)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def models(self) -> list[dict[str, Any]]:
        """Model cards served by at least one healthy engine, first engine's card wins."""
        seen: dict[str, dict[str, Any]] = {}
        for engine in self._engines:
            if engine.healthy:
                for model_id, card in engine.cards.items():
                    seen.setdefault(model_id, card)
        return list(seen.values())

    def model_label(self, model: str) -> str:
        """``model`` if some engine serves (or served) it, else ``unknown``."""
        return model if any(model in e.cards for e in self._engines) else "unknown"

    def max_model_len(self, model: str) -> int | None:
        lengths = [
            int(e.cards[model]["max_model_len"]) for e in self._engines
            if model in e.cards and isinstance(e.cards[model].get("max_model_len"), int)
        ]
        return min(lengths) if lengths else None

    def candidates(self, model: str, exclude: frozenset[str] = frozenset()) -> list[EngineState]:
        """Healthy engines serving ``model``, best first. Raises when there are none."""
        serving = [e for e in self._engines if model in e.cards]
        if not serving:
            if not any(e.healthy for e in self._engines):
                raise NoHealthyEngine("no engine is up yet; retry shortly",)
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        healthy = [e for e in serving if e.healthy and e.name not in exclude]
        if not healthy:
            raise NoHealthyEngine(f"no healthy engine serves '{model}'")
        offset = next(self._turn) % len(healthy)
        rotated = healthy[offset:] + healthy[:offset]
        return sorted(rotated, key=lambda e: e.in_flight)

    @contextmanager
    def lease(self, engine: EngineState) -> Iterator[EngineState]:
        """Count a request on ``engine`` for as long as the block runs."""
        engine.in_flight += 1
        gauge = self._metrics.engine_in_flight.labels(engine.name)
        gauge.inc()
        try:
            yield engine
        finally:
            engine.in_flight -= 1
            gauge.dec()

    def mark_failed(self, engine: EngineState, error: SluiceError) -> None:
        """An engine failed a request in a way that means it is down: stop routing to it."""
        engine.healthy = False
        engine.last_error = error.message
        self._metrics.engine_up.labels(engine.name).set(0)
        self._metrics.upstream_errors.labels(engine.name, type(error).__name__).inc()

    async def refresh(self) -> None:
        """Check every engine once (concurrently)."""
        await asyncio.gather(*(self._check(e) for e in self._engines))
        if self.ready:
            self._ready.set()

    async def _check(self, engine: EngineState) -> None:
        try:
            healthy = await engine.client.health()
            cards = {c["id"]: c for c in await engine.client.models()} if healthy else {}
        except SluiceError as exc:
            healthy, cards = False, {}
            if engine.last_error != exc.message:
                log.info("engine %s down: %s", engine.name, exc.message)
            engine.last_error = exc.message
        else:
            if healthy and not engine.healthy:
                log.info("engine %s up, serving %s", engine.name, sorted(cards))
            engine.last_error = None
        engine.healthy, engine.cards = healthy, cards if healthy else engine.cards
        self._metrics.engine_up.labels(engine.name).set(1 if healthy else 0)

    async def run_health_checks(self) -> None:
        """Refresh forever at the configured interval, starting one interval from now
        (the lifespan has just refreshed); cancel to stop."""
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()
