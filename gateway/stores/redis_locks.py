"""Leases in Redis: which replica leads an identical request (see :mod:`gateway.cache`).

A lease is one key, ``P lock:<cache key>``, set with ``SET NX PX`` to its owner's id (a
replica's); release is a compare-and-delete script, so a replica never deletes a lease
that expired and was taken by another. While Redis is down, ``acquire`` grants (each
replica then leads on its own: at worst one upstream call per replica, as without a
shared store) and ``held`` says no (a request waiting on another replica makes its
own call).
"""

from __future__ import annotations

from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_link import RedisLink

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""KEYS: the lease. ARGV: the owner. Deletes the lease only if the owner holds it."""


class RedisLocks:
    """The :class:`~gateway.stores.Locks` protocol over Redis."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self._release = link.client.register_script(RELEASE)

    async def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        name = self._link.key("lock", key)
        try:
            granted = await self._link.call("lock_acquire", lambda: self._link.client.set(
                name, owner, nx=True, px=max(1, int(ttl_s * 1000))))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("locks").inc()
            return True
        return bool(granted)

    async def release(self, key: str, owner: str) -> None:
        name = self._link.key("lock", key)
        try:
            await self._link.call("lock_release",
                                  lambda: self._release(keys=[name], args=[owner]))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("locks").inc()

    async def held(self, key: str) -> bool:
        name = self._link.key("lock", key)
        try:
            count = await self._link.call("lock_held",
                                          lambda: self._link.client.exists(name))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("locks").inc()
            return False
        return bool(count)
