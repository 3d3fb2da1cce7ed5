"""Open the Redis-backed stores for one app's lifespan, and close them with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.config.state import RedisSettings
from gateway.core.policy import RETENTION_S
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import Stores
from gateway.stores.redis_adapters import RedisAdapterRegistrations
from gateway.stores.redis_cache import RedisCache
from gateway.stores.redis_counters import RedisCounters
from gateway.stores.redis_link import RedisLink
from gateway.stores.redis_locks import RedisLocks
from gateway.stores.redis_measurements import RedisMeasurements
from gateway.stores.redis_placement import RedisAdapterPlacement
from gateway.stores.redis_rollouts import RedisRollouts
from gateway.stores.redis_versions import RedisVersionPolicies


@dataclass(frozen=True, slots=True)
class RedisState:
    stores: Stores
    link: RedisLink
    measurements: RedisMeasurements


@asynccontextmanager
async def redis_stores(settings: RedisSettings, metrics: GatewayMetrics, *,
                       measure_retention_s: float = RETENTION_S) -> AsyncIterator[RedisState]:
    """The stores over one pooled client. Redis need not be up at start: the gateway
    starts degraded (see ``fail_open``) and the probe task brings it in. At exit the
    measurements still pending are flushed, this replica's admission slots are given
    back and the pool is closed."""
    link = RedisLink(settings, metrics)
    counters = RedisCounters(link, metrics)
    measurements = RedisMeasurements(link, metrics, retention_s=measure_retention_s,
                                     flush_s=settings.measure_flush_s)
    stores = Stores(counters, RedisCache(link, metrics), RedisAdapterPlacement(link, metrics),
                    RedisVersionPolicies(link, metrics), measurements, RedisRollouts(link),
                    locks=RedisLocks(link, metrics),
                    registrations=RedisAdapterRegistrations(link))
    try:
        await link.probe()
        probes = asyncio.create_task(link.run_probes(), name="redis-probes")
        flushes = asyncio.create_task(measurements.run_flushes(), name="measure-flushes")
        try:
            yield RedisState(stores, link, measurements)
        finally:
            link.stop_probes()
            measurements.stop()
            for task, period in ((probes, settings.probe_interval_s),
                                 (flushes, settings.measure_flush_s)):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, period + 2 * link.bound_s)
            await measurements.flush()
            await counters.close()
    finally:
        await link.aclose()
