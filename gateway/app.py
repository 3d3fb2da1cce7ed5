"""The application factory: ``create_app(settings)`` builds a self-contained gateway.

Resources (managed engines, the upstream connection pool, the engine pool and its
health checks, the state stores and their Redis connection) are opened in the lifespan
and handed to services explicitly; the lifespan's state is what handlers see as
``request.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from engines.supervisor import EngineProcess
from gateway.cache import CachePolicy, ResponseCaching
from gateway.config.settings import EngineConfig, Settings
from gateway.edge.cors import Cors
from gateway.edge.gate import Edge
from gateway.edge.handlers import EXCEPTION_HANDLERS
from gateway.edge.lockout import FailedAttempts
from gateway.edge.middleware import OPEN_PATHS, Auth
from gateway.edge.routes import (
    admin,
    admin_adapters,
    admin_versions,
    docs,
    health,
    openai,
    playground,
    ws,
)
from gateway.edge.websocket.holds import Holds
from gateway.edge.websocket.realtime import RealtimeRelay
from gateway.keys import KeyService, memory_keys
from gateway.keys.redis import redis_keys
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.adapter_registry import AdapterRegistry
from gateway.pipeline.adapters import AdapterPlacer
from gateway.pipeline.admission import Admission
from gateway.pipeline.answer import Answer
from gateway.pipeline.connector import Connector
from gateway.pipeline.director import Director
from gateway.pipeline.drain import Drain
from gateway.pipeline.reload import Reconfigure
from gateway.scheduling import Scheduler
from gateway.stores import Stores, memory_stores
from gateway.stores.memory import MemoryAdapterRegistrations
from gateway.stores.redis_adapters import RedisAdapterRegistrations
from gateway.stores.redis_link import RedisLink, watch_channel
from gateway.stores.redis_stores import redis_stores
from gateway.stores.redis_versions import RedisVersionPolicies, watch_versions
from gateway.upstream.client import EngineClient
from gateway.upstream.discovery import Discovery
from gateway.upstream.http1 import Http1Transport
from gateway.upstream.pool import EnginePool
from gateway.upstream.transport import EngineHeaders, Transport
from gateway.versions import VersionRouter
from gateway.versions.rollout import Rollouts
from gateway.versions.service import VersionService
from gateway.versions.shadow import ShadowMirror
from gateway.versions.stats import VersionMeasure


def create_app(settings: Settings, *, transport: Transport | None = None,
               stores: Stores | None = None, keys: KeyService | None = None) -> Edge:
    """A gateway app for ``settings``. Nothing starts until its lifespan runs.

    ``transport`` replaces the production engine transport (tests pass an in-memory one);
    ``stores`` replaces the state stores (otherwise Redis-backed when ``redis.url`` is
    set, in memory when not), ``keys`` the key store and rate limiter (the same: in
    Redis when ``redis.url`` is set and ``stores`` is not given, else in memory).
    ``app.state.drain`` is what a
    server calls on SIGTERM (see :mod:`gateway.edge.server`), ``app.state.reconfigure``
    (once started) what it applies a reloaded configuration with, on SIGHUP. The app is the edge
    (:mod:`gateway.edge.gate`) in front of a Starlette router that runs the lifespan."""
    metrics = GatewayMetrics()
    scheduler = Scheduler(settings.routing, metrics,  # a bad profile fails here, early
                          lora_weight=settings.lora.affinity_weight)
    drain = Drain(settings.drain.timeout_s, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engines = settings.resolved_engines()
        async with AsyncExitStack() as stack:
            for config in engines:
                if config.managed is not None:
                    process = EngineProcess(config.name, config.managed,
                                            settings.log_dir / f"engine-{config.name}.log",
                                            api_key=config.api_key)
                    await process.start()
                    stack.push_async_callback(process.stop)
            upstream = transport or Http1Transport(settings.pool, settings.timeouts,
                                                   settings.websocket)
            stack.push_async_callback(upstream.aclose)

            def client(config: EngineConfig) -> EngineClient:
                return EngineClient(config.name, config.base_url, upstream, settings.timeouts,
                                    max_answer_bytes=settings.max_answer_bytes,
                                    headers=EngineHeaders.of(config.upstream_headers()))

            pool = EnginePool(engines, client, metrics,
                              health_interval_s=settings.health_interval_s,
                              scrape_interval_s=settings.routing.scrape_interval_s,
                              breaker=settings.resilience.breaker,
                              served_as=settings.versions.served_as())
            pool.on_restart = pool.on_removed = scheduler.engine_restarted
            redis: RedisLink | None = None
            if stores is not None:
                state = stores
            elif settings.redis.url:
                shared = await stack.enter_async_context(redis_stores(
                    settings.redis, metrics,
                    measure_retention_s=settings.versions.measure_retention_s))
                state, redis = shared.stores, shared.link
            else:
                state = memory_stores(
                    settings.cache, measure_retention_s=settings.versions.measure_retention_s)
            if keys is not None:
                key_service = keys
            elif redis is not None:
                key_service, watch_keys = redis_keys(redis, metrics)
                stack.push_async_callback(
                    _cancel, asyncio.create_task(watch_keys, name="keys-watch"))
            else:
                key_service = memory_keys()
            connector = Connector(pool, scheduler, drain, metrics, settings.resilience)
            await pool.refresh()
            await pool.scrape()  # adapter bounds known before the first request
            for loop, name in ((pool.run_health_checks, "health-checks"),
                               (pool.run_scrapes, "load-scrapes")):
                stack.push_async_callback(_cancel, asyncio.create_task(loop(), name=name))
            stack.callback(drain.cancel)
            discovery = Discovery(pool, metrics)
            stack.push_async_callback(discovery.aclose)
            await discovery.reconfigure(settings.discovery)
            versions = VersionRouter(settings.versions, state.versions, pool.serving)
            versions.mirror = mirror = ShadowMirror(
                pool, metrics, max_in_flight=settings.versions.shadow_max_in_flight,
                max_answer_bytes=settings.max_answer_bytes, wait_s=settings.timeouts.total_s,
                text_chars=settings.versions.shadow_text_chars,
                text_threshold=settings.versions.shadow_text_threshold)
            stack.push_async_callback(mirror.aclose)
            version_admin = VersionService(versions)
            rollouts = Rollouts(version_admin, versions, state.measurements, state.rollouts,
                                settings.versions.rollout)
            registry = AdapterRegistry(settings.adapters, state.registrations or
                                       MemoryAdapterRegistrations(), roots=settings.lora.roots)
            await registry.reload()
            stack.push_async_callback(_cancel, asyncio.create_task(
                registry.run_reconcile(settings.versions.reconcile_s), name="adapters"))
            if redis is not None and isinstance(state.registrations,
                                                RedisAdapterRegistrations):
                watch_adapters = watch_channel(redis, state.registrations.channel,
                                               registry.reload, op="adapters_watch")
                stack.push_async_callback(_cancel, asyncio.create_task(
                    watch_adapters, name="adapters-watch"))
            connector.adapters = placer = AdapterPlacer(
                registry, pool, metrics, settings.lora, locks=state.locks,
                owner=rollouts.replica)
            stack.push_async_callback(placer.aclose)
            stack.push_async_callback(rollouts.aclose)
            await versions.seed()
            stack.push_async_callback(
                _cancel, asyncio.create_task(versions.run_reconcile(), name="versions"))
            stack.push_async_callback(
                _cancel, asyncio.create_task(rollouts.run_watch(), name="rollout-watch"))
            if redis is not None and isinstance(state.versions, RedisVersionPolicies):
                watch = watch_versions(redis, state.versions.channel, versions.reload)
                stack.push_async_callback(
                    _cancel, asyncio.create_task(watch, name="versions-watch"))
            admission = Admission(settings.admission, state.counters)
            app.state.reconfigure = Reconfigure(settings, pool, discovery, scheduler,
                                                admission, metrics)
            director = Director(
                pool, admission,
                _caching(settings, state, metrics), drain, metrics, keys=key_service,
                versions=versions, adapters=registry,
                hooks=[mirror.finished, VersionMeasure(
                    state.measurements, metrics,
                    max_caller_share=settings.versions.rollout.max_caller_share).record])
            yield {
                "settings": settings,
                "metrics": metrics,
                "pool": pool,
                "drain": drain,
                "redis": redis,
                "director": director,
                "answer": Answer(connector, drain, metrics, settings.resilience,
                                 director.finish, max_event_bytes=settings.max_event_bytes),
                "keys": key_service,
                "adapters": registry,
                "placer": placer,
                "admin_attempts": FailedAttempts(),
                "versions": versions,
                "version_admin": version_admin,
                "rollouts": rollouts,
                "realtime": RealtimeRelay(connector, pool, director, settings.websocket,
                                          drain),
                "sockets": Holds(settings.websocket.max_sockets_per_key),
            }

    page = playground.routes() if settings.playground else []
    admin_routes = [*admin.routes, *admin_versions.routes, *admin_adapters.routes] \
        if settings.admin.enabled else []
    router = Starlette(routes=[*openai.routes, *ws.routes, *health.routes, *docs.routes,
                               *page, *admin_routes],
                       exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    # No redirect to the other slash form: Starlette builds its Location from the
    # client's Host header (an open redirect); /admin/keys/ is a 404 like any unknown path.
    router.router.redirect_slashes = False
    router.state.drain = drain
    return Edge(
        router, hot={path: (handler, handler.endpoint)
                     for path, handler in openai.ENDPOINTS.items()},
        auth=Auth(api_keys=settings.api_keys, managed_keys=settings.admin.enabled,
                  observability_open=settings.observability.open,
                  open_paths=OPEN_PATHS | (playground.PATHS if page else frozenset())),
        cors=Cors(allowed_origins=settings.cors_origins,
                  allowed_headers=settings.cors.allowed_headers,
                  max_age_s=settings.cors.max_age_s),
        metrics=metrics, max_body_bytes=settings.max_body_bytes,
        log_requests=settings.access_log)


def _caching(settings: Settings, stores: Stores, metrics: GatewayMetrics
             ) -> ResponseCaching | None:
    """The response cache over the app's store, None when ``cache.enabled`` is off."""
    cache = settings.cache
    if not cache.enabled:
        return None
    return ResponseCaching(CachePolicy(shared_across_keys=cache.shared_across_keys),
                           stores.cache, metrics, ttl_s=cache.ttl_s,
                           max_entry_bytes=cache.max_entry_bytes, coalesce=cache.coalesce,
                           waits=settings.timeouts, locks=stores.locks,
                           follow_wait_s=cache.follow_wait_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
