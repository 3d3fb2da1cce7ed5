"""Registered LoRA adapters, loaded on demand onto the engine a request is sent to.

A request whose ``model`` names a registered adapter (:class:`AdapterRegistry`) is
scheduled among the engines serving its base with LoRA on (see the ``serves_model``
filter and the ``lora_affinity`` scorer); then, before the request is sent, the
:class:`AdapterPlacer` makes sure the chosen engine holds the adapter:

- held already: nothing to do (no lock, no call), unless a load on that engine has
  waited for a slot longer than half a second: then the request queues behind it too, so
  that one of the held adapters goes idle and makes room (an aging bound: steady traffic
  on the held adapters cannot starve the load, nor a waiting load idle them at once);
- else one residency change per engine at a time (an ``asyncio.Lock`` per engine, and
  with Redis a lease per engine shared by every replica): the engine's ``/v1/models`` is
  read again (another replica may have loaded it meanwhile), and when the engine holds
  its bound of adapters the least recently used one with nothing running or waiting is
  unloaded first (``/v1/unload_lora_adapter``; see :mod:`adapters.residency`); when every
  held adapter is in use, the load waits for one to go idle; then
  ``/v1/load_lora_adapter``. Concurrent requests for the adapter wait for that one load
  (single flight) and find it held.

An adapter counts as in use on an engine from the moment a request is scheduled with it
there until that request ends, so a load never unloads an adapter a request is about to
use. The whole of it, waits included, is bounded by ``lora.load_timeout_s`` (then 503
``adapter_unavailable``) and shown in ``Server-Timing`` as ``adapter``. A load an engine
refuses or fails is :class:`~gateway.core.errors.AdapterLoadFailed`: retried on another
engine, and reported naming the adapter when none loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from adapters import AdapterSpec, Resident, victim
from gateway.config.adapters import LoraSettings
from gateway.core.context import RequestContext
from gateway.core.errors import AdapterLoadFailed, AdapterUnavailable, SluiceError, echo
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.adapter_registry import AdapterRegistry
from gateway.stores import Locks
from gateway.stores.protocols import StoreUnavailable
from gateway.upstream.pool import EnginePool, EngineState

log = logging.getLogger("sluice.adapters")

_IDLE_POLL_S = 0.1
"""How often a load waiting for a slot looks again (another gateway's requests end
without telling this one; the engine's scrape says so)."""
_FAIR_S = 0.5
"""How long requests for the adapters an engine holds go ahead of a load waiting there
for a slot; past it they queue behind it (an aging bound: neither side starves)."""
_SETTLE_S = 0.05
"""With other replicas, how long an unload waits for their requests already on the way
to reach the engine (and show in its ``vllm:lora_requests_info``)."""
_LEASE_S = 30.0
"""A replica's lease on an engine's residency (longer than any load; a crashed holder's
lapses)."""


class AdapterPlacer:
    """Puts a request's adapter on its engine (see the module doc)."""

    def __init__(self, registry: AdapterRegistry, pool: EnginePool, metrics: GatewayMetrics,
                 settings: LoraSettings, *, locks: Locks | None = None, owner: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._pool = pool
        self._retiring: set[asyncio.Task[None]] = set()
        self._metrics = metrics
        self._settings = settings
        self._locks = locks
        self._owner = owner
        self._clock = clock
        self._in_use: dict[tuple[str, str], int] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._engine_locks: dict[str, asyncio.Lock] = {}
        self._slot_wait: dict[str, float] = {}
        """Per engine, since when a load has waited for a slot (every adapter busy)."""
        self._idle = asyncio.Event()
        """Set when an adapter went idle here (a waiting load looks again)."""

    def retire(self, name: str) -> None:
        """An adapter no longer registered: unloaded, in the background, from every
        engine holding it as soon as nothing runs on it there (within
        ``lora.load_timeout_s``; past that it stays until a load needs its slot)."""
        task = asyncio.create_task(self._retire(name), name=f"retire-adapter-{name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Cancel the retirements still waiting (at shutdown)."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _retire(self, name: str) -> None:
        for engine in self._pool.engines:
            await self._reread(engine)  # another replica may have loaded it
            if name not in engine.cards:
                continue
            lock = self._engine_locks.setdefault(engine.name, asyncio.Lock())
            try:
                async with asyncio.timeout(self._settings.load_timeout_s):
                    async with lock, self._lease(engine.name):
                        while self.in_use(engine.name, name) or \
                                name in await self._busy_now(engine):
                            self._idle.clear()
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(_IDLE_POLL_S):
                                    await self._idle.wait()
                        engine.cards.pop(name, None)
                        if await engine.client.unload_adapter(name):
                            self._metrics.adapter_unloads.labels(engine.name).inc()
                        self._publish(engine)
            except (TimeoutError, SluiceError) as exc:
                log.warning("adapter %s not unloaded from engine %s: %r", name, engine.name,
                            exc)

    def in_use(self, engine: str, adapter: str) -> int:
        return self._in_use.get((engine, adapter), 0)

    async def prepare(self, ctx: RequestContext, engine: EngineState
                      ) -> Callable[[], None] | None:
        """Make ``ctx``'s adapter resident on ``engine``; the release of its use there
        (call it when the request ends), or None for a request naming no adapter."""
        spec = ctx.lora
        if spec is None:
            return None
        lock = self._engine_locks.setdefault(engine.name, asyncio.Lock())
        if (spec.name in engine.cards and not self._starving(engine.name)
                and not await self._changing(engine.name)):
            release = self._use(engine.name, spec.name)  # held, and no load kept waiting
        else:
            try:  # in turn behind the changes pending (FIFO), so none waits forever
                async with asyncio.timeout(self._settings.load_timeout_s):
                    async with lock, self._lease(engine.name):
                        release = self._use(engine.name, spec.name)
                        try:
                            await self._load(engine, spec)
                        except BaseException:
                            release()
                            raise
            except TimeoutError:
                raise AdapterUnavailable(
                    f"no slot for adapter '{echo(spec.name)}' on engine {engine.name} "
                    f"within {self._settings.load_timeout_s:g} s: it holds its bound of "
                    "adapters, each in use; retry shortly") from None
        ctx.timings.adapted = time.perf_counter()
        return release

    def _starving(self, engine: str) -> bool:
        """Whether a load on ``engine`` has waited for a slot longer than
        ``_FAIR_S``: then requests for the adapters it holds queue too, so that one of
        them goes idle and makes room (else steady traffic would starve the load)."""
        since = self._slot_wait.get(engine)
        return since is not None and self._clock() - since > _FAIR_S

    def _use(self, engine: str, adapter: str) -> Callable[[], None]:
        """Count one use of ``adapter`` on ``engine``; the call that ends it (once)."""
        key = (engine, adapter)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self._last_used[key] = self._clock()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._in_use[key] - 1
            if left:
                self._in_use[key] = left
            else:
                del self._in_use[key]
                self._idle.set()

        return release

    async def _load(self, engine: EngineState, spec: AdapterSpec) -> None:
        """Load ``spec`` on ``engine`` unless it holds it (under the engine's lock)."""
        if spec.name in engine.cards:
            return  # the change this request waited behind brought it
        await self._reread(engine)
        if spec.name in engine.cards:
            return  # another replica loaded it
        await self._make_room(engine, spec)
        started = time.perf_counter()
        try:
            await engine.client.load_adapter(spec.name, spec.path)
        except SluiceError as exc:
            self._metrics.adapter_loads.labels(engine.name, "failed").inc()
            log.warning("engine %s could not load adapter %s: %s", engine.name,
                        spec.name, exc.message)
            raise AdapterLoadFailed(
                f"could not load adapter '{spec.name}' on engine {engine.name}: "
                f"{exc.message}") from None
        self._metrics.adapter_loads.labels(engine.name, "loaded").inc()
        self._metrics.adapter_load_seconds.labels(engine.name).observe(
            time.perf_counter() - started)
        engine.cards[spec.name] = {"id": spec.name, "object": "model",
                                   "root": spec.path, "parent": spec.base}
        self._publish(engine)
        log.info("loaded adapter %s on engine %s", spec.name, engine.name)

    async def _make_room(self, engine: EngineState, spec: AdapterSpec) -> None:
        """Unload the least recently used idle adapter while the engine is at its bound;
        wait while every one it holds is in use."""
        try:
            await self._room(engine, spec)
        finally:
            self._slot_wait.pop(engine.name, None)

    async def _room(self, engine: EngineState, spec: AdapterSpec) -> None:
        while True:
            bound = engine.lora_bound
            held = engine.adapters
            if bound is None or len(held) < bound:
                return
            busy = await self._busy_now(engine)
            chosen = victim(self._resident(engine, held, busy))
            if chosen is not None and self._locks is not None:
                # Another replica's request sent before this one took the lease may not
                # have reached the engine yet: give it the time, then look again.
                await asyncio.sleep(_SETTLE_S)
                busy = await self._busy_now(engine)
                chosen = victim(self._resident(engine, held, busy))
            if chosen is None:
                self._slot_wait.setdefault(engine.name, self._clock())
                self._idle.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_IDLE_POLL_S):
                        await self._idle.wait()
                continue
            card = engine.cards.pop(chosen, None)  # no request is sent to it from now
            try:
                unloaded = await engine.client.unload_adapter(chosen)
            except SluiceError as exc:
                if card is not None:
                    engine.cards[chosen] = card
                raise AdapterLoadFailed(
                    f"could not unload adapter '{chosen}' from engine {engine.name} to make "
                    f"room for '{spec.name}': {exc.message}") from None
            self._publish(engine)
            if unloaded:  # (else a stale card: the engine no longer held it)
                self._metrics.adapter_unloads.labels(engine.name).inc()
                log.info("unloaded adapter %s from engine %s for %s", chosen, engine.name,
                         spec.name)

    def _resident(self, engine: EngineState, held: list[str],
                  busy: frozenset[str]) -> list[Resident]:
        out = []
        for name in held:
            spec = self._registry.get(name)
            out.append(Resident(
                name, self._last_used.get((engine.name, name), 0.0),
                busy=self.in_use(engine.name, name) > 0 or name in busy,
                pinned=spec is not None and spec.pinned))
        return out

    async def _busy_now(self, engine: EngineState) -> frozenset[str]:
        """The adapters with requests running or waiting on the engine, as it says now
        (every gateway's requests; the last scrape's when it does not answer)."""
        try:
            load = await engine.client.load()
        except SluiceError:
            return engine.scraped.lora.busy
        engine.scraped, engine.scraped_at = load, time.monotonic()
        return load.lora.busy

    async def _changing(self, engine: str) -> bool:
        """Whether another replica is changing ``engine``'s adapters (with Redis): a
        request then waits its turn rather than use an adapter about to go."""
        if self._locks is None:
            return False
        try:
            return await self._locks.held(f"adapters:{engine}")
        except StoreUnavailable:
            return False

    async def _reread(self, engine: EngineState) -> None:
        """The engine's adapters as it says now (another replica may have changed them)."""
        try:
            cards = await engine.client.models()
        except SluiceError:
            return  # the last known cards stand; the load itself will tell
        engine.cards = {card["id"]: card for card in cards}

    @contextlib.asynccontextmanager
    async def _lease(self, engine: str) -> AsyncIterator[None]:
        """Every replica's residency changes of ``engine`` one at a time (Redis)."""
        if self._locks is None:
            yield
            return
        key = f"adapters:{engine}"
        try:
            while True:
                if await self._locks.acquire(key, self._owner, _LEASE_S):
                    break
                await asyncio.sleep(_IDLE_POLL_S)  # another replica is changing it
        except StoreUnavailable:  # Redis down: this replica's own lock still holds
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self._locks.release(key, self._owner)

    def _publish(self, engine: EngineState) -> None:
        self._metrics.adapters_resident.labels(engine.name).set(len(engine.adapters))
