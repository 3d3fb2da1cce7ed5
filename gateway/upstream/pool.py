"""The engines behind the gateway: health, load, circuit state and what each serves.

Two loops keep the picture fresh: health checks (``/health`` and ``/v1/models``, every
``health_interval_s``) and load scrapes (``/metrics``, every ``scrape_interval_s``). A
request that finds an engine unreachable marks it down at once, without waiting for them.

Membership changes while serving (:meth:`EnginePool.add`, :meth:`EnginePool.remove`:
discovery and config reload). The engine list is replaced whole, never edited, so a
loop or a request that took it keeps a consistent list. A new engine is routed to once a
health check passes; a removed one at once takes no new request, while those it has in
flight finish on it, and its metric series go when the last one ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Gauge

from gateway.config.fleet import BreakerSettings
from gateway.config.settings import EngineConfig
from gateway.core.errors import (
    NoHealthyEngine,
    SluiceError,
    UnsupportedEndpoint,
    UpstreamRejected,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.breaker import BreakerState, CircuitBreaker
from gateway.upstream.client import EngineClient
from gateway.upstream.load import EngineLoad

ClientFactory = Callable[[EngineConfig], EngineClient]
"""Builds the client for one configured engine (the app binds it to a transport)."""

log = logging.getLogger("sluice.engines")

_SCRAPE_FRESH_S = 2.0
"""A scrape older than this no longer says anything about an engine's load."""
_CIRCUIT_VALUE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@dataclass
class EngineState:
    """What the gateway knows about one engine right now."""

    client: EngineClient
    breaker: CircuitBreaker
    healthy: bool = False
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    in_flight: int = 0
    last_error: str | None = None
    seen_down: bool = False
    """A health check found it down (not merely a request that failed to connect)."""
    scraped: EngineLoad = field(default_factory=EngineLoad)
    scraped_at: float = -math.inf
    max_loras: int | None = None
    """The configured adapter bound (None: the one the engine reports)."""
    max_lora_rank: int | None = None
    config: EngineConfig | None = None
    """What it was configured (or discovered) with."""
    removed: bool = False
    """Taken out of the pool: no new request goes to it."""

    @property
    def lora_bound(self) -> int | None:
        """Adapters it holds at once: configured, else reported, else 1 (vLLM's default)
        while LoRA is on but no bound reported yet; None: LoRA is off, as far as the
        gateway knows."""
        if self.max_loras is not None:
            return self.max_loras
        lora = self.scraped.lora
        if lora.max_lora is not None:
            return lora.max_lora
        return 1 if lora.enabled else None

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters it has loaded (its cards with a parent)."""
        return [name for name, card in self.cards.items() if card.get("parent")]

    @property
    def lora_busy(self) -> frozenset[str]:
        """Adapters with requests running or waiting on it, by any gateway (a recent
        scrape; empty when the last one is too old to say)."""
        if time.monotonic() - self.scraped_at > _SCRAPE_FRESH_S:
            return frozenset()
        return self.scraped.lora.busy

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def load(self) -> int:
        """Requests on the engine: the gateway's own exact count, or the engine's running
        plus waiting when a recent scrape saw more (other gateways send to it too)."""
        if time.monotonic() - self.scraped_at > _SCRAPE_FRESH_S:
            return self.in_flight
        return max(self.in_flight, int(self.scraped.queued))

    @property
    def kv_usage(self) -> float:
        """The KV-cache usage a recent scrape saw (1.0 = full); 0 when the last scrape is
        too old to say anything, as :attr:`load` falls back to the gateway's own count."""
        if time.monotonic() - self.scraped_at > _SCRAPE_FRESH_S:
            return 0.0
        return self.scraped.kv_usage

    @property
    def routable(self) -> bool:
        return self.healthy and not self.removed and self.breaker.available()


class EnginePool:
    """Tracks every engine: health, load, circuit and the models each serves."""

    def __init__(self, configs: list[EngineConfig], clients: ClientFactory,
                 metrics: GatewayMetrics, *, health_interval_s: float,
                 scrape_interval_s: float = 0.25,
                 breaker: BreakerSettings = BreakerSettings(),
                 served_as: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> None:
        """``served_as``: the (alias, version) pairs each served model name stands for
        (``sluice_engine_info``; see :meth:`VersionsSettings.served_as`)."""
        self._clients = clients
        self._breaker = breaker
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"engine names used twice: {sorted(names)}")
        self._engines = [self._state(c) for c in configs]
        self._metrics = metrics
        self._interval = health_interval_s
        self._scrape_interval = scrape_interval_s
        self._known: set[str] = set()
        """Every model some engine served since start (metrics label values)."""
        self._served_as = served_as or {}
        self._info: dict[str, set[tuple[str, str]]] = {}
        """The (model, version) labels of each engine's ``sluice_engine_info`` now."""
        self._in_flight_gauges: dict[str, Gauge] = {}
        self._published_circuits: dict[str, int] = {}
        self.on_restart: Callable[[str], None] | None = None
        """Called with an engine's name when it restarted (its caches are empty): a
        health check found it down and a later one up, or its prefix-cache counters went
        back. A request that failed to connect for a moment is not a restart."""
        self.on_removed: Callable[[str], None] | None = None
        """Called with an engine's name when it left the pool (its routing data can go)."""

    def _state(self, config: EngineConfig) -> EngineState:
        return EngineState(self._clients(config),
                           CircuitBreaker(self._breaker.failure_threshold,
                                          self._breaker.open_s),
                           max_loras=config.lora_bound, max_lora_rank=config.lora_rank,
                           config=config)

    @property
    def engines(self) -> list[EngineState]:
        """The engines now (a list replaced whole on a change: do not edit it)."""
        return self._engines

    def get(self, name: str) -> EngineState | None:
        return next((e for e in self._engines if e.name == name), None)

    async def add(self, config: EngineConfig) -> EngineState:
        """Put a new engine in the pool and check its health once: it takes requests
        only once a check passes (this one or a later one). ValueError when an engine of
        that name is already in."""
        if self.get(config.name) is not None:
            raise ValueError(f"engine {config.name!r} is already in the pool")
        engine = self._state(config)
        self._engines = [*self._engines, engine]
        log.info("engine %s added (%s)", engine.name, engine.client.base_url)
        await self._check(engine)
        return engine

    def remove(self, name: str) -> EngineState | None:
        """Take an engine out: no new request goes to it; those in flight finish (its
        metric series are dropped when the last one ends). None when it was not in."""
        engine = self.get(name)
        if engine is None:
            return None
        engine.removed = True
        self._engines = [e for e in self._engines if e is not engine]
        log.info("engine %s removed (%d requests in flight finish on it)", name,
                 engine.in_flight)
        if engine.in_flight == 0:
            self._forget(engine)
        if self.on_removed is not None:
            self.on_removed(name)
        return engine

    def _forget(self, engine: EngineState) -> None:
        """Drop a removed engine's metric series, unless an engine of its name is back."""
        name = engine.name
        if self.get(name) is None:
            self._metrics.forget_engine(name, self._info.pop(name, set()))
            self._in_flight_gauges.pop(name, None)
            self._published_circuits.pop(name, None)

    @property
    def ready(self) -> bool:
        return any(e.healthy and e.cards for e in self._engines)

    def models(self) -> list[dict[str, Any]]:
        """Model cards served by at least one healthy engine, first engine's card wins."""
        seen: dict[str, dict[str, Any]] = {}
        for engine in self._engines:
            if engine.healthy:
                for model_id, card in engine.cards.items():
                    seen.setdefault(model_id, card)
        return list(seen.values())

    def base_models(self) -> set[str]:
        """The base models (not LoRA adapters) the engines serve, or served when last up."""
        return {model_id for e in self._engines for model_id, card in e.cards.items()
                if card.get("parent") is None}

    def model_label(self, model: str) -> str:
        """``model`` if some engine serves (or served) it, else ``unknown``."""
        if model in self._known:
            return model
        if any(model in e.cards for e in self._engines):
            self._known.add(model)
            return model
        return "unknown"

    def max_model_len(self, model: str) -> int | None:
        lengths = [
            int(e.cards[model]["max_model_len"]) for e in self._engines
            if model in e.cards and isinstance(e.cards[model].get("max_model_len"), int)
        ]
        return min(lengths) if lengths else None

    def healthy_count(self, model: str) -> int:
        return sum(1 for e in self._engines if e.healthy and model in e.cards)

    def routable_for(self, model: str) -> list[EngineState]:
        """The engines serving ``model`` that may take a request now (up, circuit not
        open)."""
        return [e for e in self._engines if e.routable and model in e.cards]

    def serving(self, model: str) -> bool:
        """Some engine that may take a request now serves ``model``."""
        return bool(self.routable_for(model))

    async def version(self) -> dict[str, Any]:
        """``/version`` of the first healthy engine that answers it."""
        last: SluiceError = NoHealthyEngine("no engine is up yet; retry shortly")
        for engine in self.engines:
            if engine.healthy:
                try:
                    return await engine.client.get_object("/version")
                except SluiceError as exc:
                    log.warning("engine %s answered no /version: %s", engine.name,
                                exc.message)
                    last = exc
        if isinstance(last, UpstreamRejected):
            raise UnsupportedEndpoint("the engines do not support /version") from last
        raise last

    @contextmanager
    def lease(self, engine: EngineState) -> Iterator[EngineState]:
        """Count a request on ``engine`` for as long as the block runs."""
        engine.in_flight += 1
        gauge = self._in_flight_gauge(engine)
        gauge.inc()
        try:
            yield engine
        finally:
            engine.in_flight -= 1
            gauge.dec()
            if engine.removed and engine.in_flight == 0:
                self._forget(engine)

    def record_success(self, engine: EngineState) -> None:
        engine.breaker.record_success()
        self._publish_circuit(engine)

    def record_failure(self, engine: EngineState, error: SluiceError) -> None:
        """A request failed because of the engine (not because of the request)."""
        engine.breaker.record_failure()
        engine.last_error = error.message
        self._metrics.upstream_errors.labels(engine.name, type(error).__name__).inc()
        self._publish_circuit(engine)

    def mark_down(self, engine: EngineState, error: SluiceError) -> None:
        """The engine cannot be reached: stop routing to it until a health check passes."""
        if engine.removed:
            engine.healthy = False
            return
        if engine.healthy:
            log.warning("engine %s marked down: %s", engine.name, error.message)
        engine.healthy = False
        self._metrics.engine_up.labels(engine.name).set(0)
        self.record_failure(engine, error)

    def _in_flight_gauge(self, engine: EngineState) -> Gauge:
        gauge = self._in_flight_gauges.get(engine.name)
        if gauge is None:
            gauge = self._in_flight_gauges[engine.name] = \
                self._metrics.engine_in_flight.labels(engine.name)
        return gauge

    def _publish_circuit(self, engine: EngineState) -> None:
        """The breaker's state in ``sluice_circuit_state``, when it changed (every
        request that ends records a success or a failure)."""
        value = _CIRCUIT_VALUE[engine.breaker.state]
        if self._published_circuits.get(engine.name) != value:
            self._published_circuits[engine.name] = value
            self._metrics.circuit_state.labels(engine.name).set(value)

    async def refresh(self) -> None:
        """Check every engine once (concurrently)."""
        await asyncio.gather(*(self._check(e) for e in self._engines))

    async def _check(self, engine: EngineState) -> None:
        """One engine's health and models. Whatever the engine answers (or however this
        fails) only this engine's state changes: the loop that calls it never dies."""
        try:
            healthy = await engine.client.health()
            cards = {c["id"]: c for c in await engine.client.models()} if healthy else {}
        except Exception as exc:  # any failure marks only this engine down
            message = exc.message if isinstance(exc, SluiceError) else "health check failed"
            if not isinstance(exc, SluiceError):
                log.exception("health check of engine %s failed", engine.name)
            healthy, cards = False, {}
            engine.seen_down = True
            if engine.last_error != message:
                log.info("engine %s down: %s", engine.name, message)
            engine.last_error = message
        else:
            if healthy and not engine.healthy:
                log.info("engine %s up, serving %s", engine.name, sorted(cards))
            if healthy and engine.seen_down:
                engine.seen_down = False
                if self.on_restart is not None:
                    self.on_restart(engine.name)
            elif not healthy:
                engine.seen_down = True
            engine.last_error = None
        engine.healthy, engine.cards = healthy, cards if healthy else engine.cards
        self._known.update(cards)
        if engine.removed:  # it left while being checked: publish nothing of it
            return
        self._publish_info(engine)
        self._metrics.engine_up.labels(engine.name).set(1 if healthy else 0)
        self._publish_circuit(engine)

    def _publish_info(self, engine: EngineState) -> None:
        """``sluice_engine_info`` of what the engine serves (or served when last up):
        each model name with version ``none``, and each alias version it serves."""
        labels = {(model, "none") for model in engine.cards}
        labels.update(pair for model in engine.cards for pair in self._served_as.get(model, ()))
        before = self._info.get(engine.name, set())
        for model, version in before - labels:
            self._metrics.engine_info.remove(engine.name, model, version)
        for model, version in labels - before:
            self._metrics.engine_info.labels(engine.name, model, version).set(1)
        self._info[engine.name] = labels

    async def scrape(self) -> None:
        """Read every healthy engine's load once (concurrently)."""
        await asyncio.gather(*(self._scrape(e) for e in self._engines if e.healthy))

    async def _scrape(self, engine: EngineState) -> None:
        try:
            async with asyncio.timeout(max(1.0, 4 * self._scrape_interval)):
                load = await engine.client.load()
        except (SluiceError, TimeoutError):
            return  # the health check decides about the engine; this scrape is just lost
        except Exception:  # a bad page must not end the scrape loop
            log.exception("load scrape of engine %s failed", engine.name)
            return
        previous, engine.scraped = engine.scraped, load
        if load.prefix_queries < previous.prefix_queries:  # counters start again at 0
            log.info("engine %s restarted: forgetting what it had cached", engine.name)
            if self.on_restart is not None:
                self.on_restart(engine.name)
        engine.scraped_at = time.monotonic()
        if engine.removed:
            return
        labels = engine.name
        self._metrics.engine_queue.labels(labels, "running").set(engine.scraped.running)
        self._metrics.engine_queue.labels(labels, "waiting").set(engine.scraped.waiting)
        self._metrics.engine_kv_usage.labels(labels).set(engine.scraped.kv_usage)

    async def run_health_checks(self) -> None:
        """Refresh forever at the configured interval, starting one interval from now
        (the lifespan has just refreshed); cancel to stop."""
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()

    async def run_scrapes(self) -> None:
        """Scrape load forever at the scrape interval; cancel to stop."""
        while True:
            await self.scrape()
            await asyncio.sleep(self._scrape_interval)
