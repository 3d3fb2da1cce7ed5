"""Adapter placement in Redis: which engines hold which LoRA adapters.

Two sets per fact, written together in one transaction: ``P adapter:<name>`` (its
engines) and ``P engine-adapters:<engine>`` (its adapters, so that a restarted engine
is forgotten in one script). Every write also goes to a local mirror, which answers
reads while Redis is down (the last known placement); a write Redis missed is counted
and not retried: placement is re-observed from the engines.
"""

from __future__ import annotations

from gateway.observability.metrics import GatewayMetrics
from gateway.stores.memory import MemoryAdapterPlacement
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_link import RedisLink

FORGET = """
for _, adapter in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. adapter, ARGV[2])
end
redis.call('DEL', KEYS[1])
"""
"""KEYS: the engine's adapter set. ARGV: the adapter key prefix, the engine."""


class RedisAdapterPlacement:
    """The :class:`~gateway.stores.AdapterPlacement` protocol over Redis."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self._mirror = MemoryAdapterPlacement()
        self._forget = link.client.register_script(FORGET)

    def _adapter(self, adapter: str) -> str:
        return self._link.key("adapter", adapter)

    def _engine(self, engine: str) -> str:
        return self._link.key("engine-adapters", engine)

    async def engines_with(self, adapter: str) -> frozenset[str]:
        try:
            members = await self._link.call(
                "placement_read", lambda: self._link.client.smembers(self._adapter(adapter)))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("placement").inc()
            return await self._mirror.engines_with(adapter)
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def placed(self, adapter: str, engine: str) -> None:
        await self._mirror.placed(adapter, engine)
        await self._write("placement_write", adapter, engine, add=True)

    async def removed(self, adapter: str, engine: str) -> None:
        await self._mirror.removed(adapter, engine)
        await self._write("placement_write", adapter, engine, add=False)

    async def forget_engine(self, engine: str) -> None:
        await self._mirror.forget_engine(engine)
        try:
            await self._link.call("placement_forget", lambda: self._forget(
                keys=[self._engine(engine)], args=[self._link.key("adapter", ""), engine]))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("placement").inc()

    async def _write(self, op: str, adapter: str, engine: str, *, add: bool) -> None:
        async def write() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                if add:
                    pipe.sadd(self._adapter(adapter), engine)
                    pipe.sadd(self._engine(engine), adapter)
                else:
                    pipe.srem(self._adapter(adapter), engine)
                    pipe.srem(self._engine(engine), adapter)
                await pipe.execute()
        try:
            await self._link.call(op, write)
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("placement").inc()
