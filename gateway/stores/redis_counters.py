"""Admission counters in Redis, shared by every replica, with slots that cannot leak.

Layout (``P`` is the key prefix)::

    P counter:<key>   hash   replica id -> slots that replica holds on <key>
    P replicas        zset   replica id -> lease expiry (ms, Redis clock)

A counter's value is the sum of the fields whose replica holds a live lease. Each
replica renews its lease on every probe beat (``slot_ttl_s`` long, renewed every
``probe_interval_s``); a replica that crashed stops renewing, and once its lease expires
its slots no longer count (the next acquire on that key deletes its field). Acquire is
one Lua script: sum the live fields, add one to ours if the sum is below the limit.

Each replica also keeps its own holdings locally (the ledger). When a write fails (Redis
down or slow), the ledger stays right and the key is marked dirty; once Redis is back the
beat writes the ledger's value in place of ours, with no other operation on that key
from this replica in flight (they wait for it). A lapsed lease (an outage longer than
``slot_ttl_s``) marks every key dirty.

While Redis is down, ``fail_open`` counts in a local :class:`MemoryCounters` (each
replica then holds the limit on its own) or refuses every acquire with
:class:`StoreUnavailable` (503 with ``Retry-After``: the store is down, the client did
nothing wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.commands.core import AsyncScript

from gateway.observability.metrics import GatewayMetrics
from gateway.stores.memory import MemoryCounters
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_link import RedisLink

T = TypeVar("T")

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

_LIVE_SUM = """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local lease = redis.call('ZSCORE', KEYS[2], fields[i])
  if lease and tonumber(lease) > now then total = total + tonumber(fields[i + 1])
  elseif PRUNE then redis.call('HDEL', KEYS[1], fields[i]) end
end
"""

ACQUIRE = _NOW + "local PRUNE = true " + _LIVE_SUM + """
local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
local lapsed = 0
if not lease or tonumber(lease) <= now then lapsed = 2 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if total >= tonumber(ARGV[2]) then return lapsed end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1 + lapsed
"""
"""KEYS: counter, replicas. ARGV: replica, limit, ttl_ms. 1 if granted; +2 if our
lease had lapsed (our fields may have been pruned: resynchronise)."""

RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""

VALUE = _NOW + "local PRUNE = false " + _LIVE_SUM + "return total"

RENEW = _NOW + """
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if lease and tonumber(lease) > now then return 1 end
return 0
"""
"""KEYS: replicas. ARGV: replica, ttl_ms. 0 when the lease was missing or lapsed."""


class RedisCounters:
    """The :class:`~gateway.stores.Counters` protocol over Redis (see the module doc)."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._replicas = link.key("replicas")
        self._ttl_ms = int(link.settings.slot_ttl_s * 1000)
        client = link.client
        self._acquire: AsyncScript = client.register_script(ACQUIRE)
        self._release: AsyncScript = client.register_script(RELEASE)
        self._value: AsyncScript = client.register_script(VALUE)
        self._renew: AsyncScript = client.register_script(RENEW)
        self._held: Counter[str] = Counter()  # slots this replica holds in Redis
        self._local = MemoryCounters()  # slots counted here while Redis was down
        self._dirty: set[str] = set()
        self._busy: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Event] = {}
        link.on_beat(self.beat)

    def _key(self, key: str) -> str:
        return self._link.key("counter", key)

    async def acquire(self, key: str, limit: int) -> bool:
        try:
            granted = await self._guarded(key, "acquire", lambda: self._acquire(
                keys=[self._key(key), self._replicas],
                args=[self.replica, limit, self._ttl_ms]))
        except StoreUnavailable as exc:
            self._metrics.redis_bypassed.labels("counters").inc()
            self._dirty.add(key)  # a timed-out increment may have landed: resync
            if not self._link.settings.fail_open:
                raise StoreUnavailable(
                    "the shared admission counters are unreachable and redis.fail_open "
                    "is off; retry shortly", headers=exc.headers) from exc
            return await self._local.acquire(key, limit)
        if int(granted) & 2:
            self._dirty.update(self._held)
        if int(granted) & 1:
            self._held[key] += 1
            return True
        return False

    async def release(self, key: str) -> None:
        if await self._local.value(key) > 0:
            await self._local.release(key)
            return
        if self._held[key] <= 0:
            return
        self._held[key] -= 1
        if self._held[key] == 0:
            del self._held[key]
        try:
            await self._guarded(key, "release", lambda: self._release(
                keys=[self._key(key)], args=[self.replica]))
        except StoreUnavailable:
            self._dirty.add(key)

    async def value(self, key: str) -> int:
        local = await self._local.value(key)
        try:
            shared = await self._link.call("value", lambda: self._value(
                keys=[self._key(key), self._replicas]))
        except StoreUnavailable:
            return self._held[key] + local
        return int(shared) + local

    async def beat(self) -> None:
        """Renew this replica's lease; then write the ledger over every dirty key."""
        renewed = await self._link.call("renew", lambda: self._renew(
            keys=[self._replicas], args=[self.replica, self._ttl_ms]))
        if not int(renewed):
            self._dirty.update(self._held)
        for key in list(self._dirty):
            if self._busy[key] or key in self._gates:
                continue  # an operation on it is in flight: next beat
            self._gates[key] = gate = asyncio.Event()
            try:
                await self._link.call("resync", functools.partial(self._write_held, key))
                self._dirty.discard(key)
            finally:
                del self._gates[key]
                gate.set()

    async def _write_held(self, key: str) -> None:
        held = self._held[key]
        if held > 0:
            await self._link.client.hset(self._key(key), self.replica, str(held))
        else:
            self._held.pop(key, None)
            await self._link.client.hdel(self._key(key), self.replica)

    async def close(self) -> None:
        """Give back every slot this replica holds and end its lease (at shutdown)."""
        async def drop() -> None:
            async with self._link.client.pipeline(transaction=True) as pipe:
                for key in set(self._held) | self._dirty:
                    pipe.hdel(self._key(key), self.replica)
                pipe.zrem(self._replicas, self.replica)
                await pipe.execute()
        with contextlib.suppress(StoreUnavailable):  # else the lease expires on its own
            await self._link.call("close", drop)
        self._held.clear()

    async def _guarded(self, key: str, op: str, command: Callable[[], Awaitable[T]]) -> T:
        gate = self._gates.get(key)
        if gate is not None:
            await gate.wait()  # a resync of this key: bounded by the command timeout
        self._busy[key] += 1
        try:
            return await self._link.call(op, command)
        finally:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]
