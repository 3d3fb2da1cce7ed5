"""Open the Redis-backed stores for one app's lifespan, and close them with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.metrics import GatewayMetrics
from gateway.settings import RedisSettings
from gateway.stores.protocols import Stores
from gateway.stores.redis_cache import RedisCache
from gateway.stores.redis_counters import RedisCounters
from gateway.stores.redis_link import RedisLink
from gateway.stores.redis_placement import RedisAdapterPlacement
from gateway.stores.redis_versions import RedisVersionPolicies


@dataclass(frozen=True, slots=True)
class RedisState:
    stores: Stores
    link: RedisLink


@asynccontextmanager
async def redis_stores(settings: RedisSettings, metrics: GatewayMetrics
                       ) -> AsyncIterator[RedisState]:
    """The four stores over one pooled client. Redis need not be up at start: the
    gateway starts degraded (see ``fail_open``) and the probe task brings it in. At
    exit this replica's admission slots are given back and the pool is closed."""
    link = RedisLink(settings, metrics)
    counters = RedisCounters(link, metrics)
    stores = Stores(counters, RedisCache(link, metrics), RedisAdapterPlacement(link, metrics),
                    RedisVersionPolicies(link, metrics))
    try:
        await link.probe()
        probes = asyncio.create_task(link.run_probes(), name="redis-probes")
        try:
            yield RedisState(stores, link)
        finally:
            link.stop_probes()
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(probes, settings.probe_interval_s + 2 * link.bound_s)
            await counters.close()
    finally:
        await link.aclose()
