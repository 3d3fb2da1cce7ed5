"""Per-version measurements in Redis: every replica's requests, summed over any window.

Layout (``P`` is the key prefix; ``<minute>`` is an epoch second // 60, ``<s>`` the
second within it)::

    P measure:<alias>:<version>:<minute>   hash   <s>:n -> requests, <s>:e -> server
                                                  errors, <s>:<bucket> -> TTFTs in it

A replica never calls Redis for one request: :meth:`RedisMeasurements.record` counts it
locally, twice: in this replica's own figures (kept ``retention_s``) and in the pending
counts not yet in Redis. Every ``flush_s`` one transaction (MULTI/EXEC) of HINCRBY per
pending field and EXPIRE per key (``retention_s`` past its minute) adds them. A flush
that fails is kept and retried with the next one; pending seconds older than
``retention_s`` are dropped (their keys would have expired). A flush whose EXEC reached
Redis but whose reply was lost (a timeout) is retried too, so at worst counted twice.

A window read is one pipeline of HGETALL, one per minute the window touches. While
Redis is down it answers from this replica's own figures (counted in
``sluice_redis_bypassed{store="measurements"}``). What the other replicas counted
reaches a reader at most ``flush_s`` late.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_link import RedisLink, as_bytes
from gateway.stores.windows import Counts, Seconds, Window

log = logging.getLogger("sluice.redis")

Second = tuple[str, str, int]
"""(alias, version, epoch second)"""


class RedisMeasurements:
    """The :class:`~gateway.stores.VersionMeasurements` protocol over Redis."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics, *, retention_s: float,
                 flush_s: float, clock: Callable[[], float] = time.time) -> None:
        self._link = link
        self._metrics = metrics
        self.retention_s = retention_s
        self._flush_s = flush_s
        self._clock = clock
        self._ttl_s = math.ceil(retention_s) + 60
        self._own = Seconds(retention_s)
        self._pending: dict[Second, Counts] = {}
        self._closing = False

    def _key(self, alias: str, version: str, minute: int) -> str:
        return self._link.key("measure", alias, version, str(minute))

    def record(self, alias: str, version: str, *, at: float, error: bool,
               ttft_s: float | None) -> None:
        second = self._own.count(alias, version, at, error, ttft_s)
        self._pending.setdefault((alias, version, second), Counts()).count(error, ttft_s)

    @property
    def pending(self) -> int:
        """Seconds counted here and not in Redis yet."""
        return len(self._pending)

    async def flush(self) -> None:
        """Add the pending counts to Redis; kept for the next flush when it fails."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._link.call("measure_flush", lambda: self._write(batch))
        except StoreUnavailable:
            self._keep(batch)
        except asyncio.CancelledError:  # at shutdown: the last flush retries it
            self._keep(batch)
            raise

    async def _write(self, batch: dict[Second, Counts]) -> None:
        keys: set[str] = set()
        async with self._link.client.pipeline(transaction=True) as pipe:
            for (alias, version, second), counts in batch.items():
                key = self._key(alias, version, second // 60)
                keys.add(key)
                s = second % 60
                pipe.hincrby(key, f"{s}:n", counts.requests)
                if counts.errors:
                    pipe.hincrby(key, f"{s}:e", counts.errors)
                for bucket, count in counts.ttft.items():
                    pipe.hincrby(key, f"{s}:{bucket}", count)
            for key in keys:
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

    def _keep(self, batch: dict[Second, Counts]) -> None:
        """Put a failed batch back with what was counted meanwhile, but for the seconds
        past the retention."""
        oldest = math.floor(self._clock() - self.retention_s)
        dropped = 0
        for second, counts in batch.items():
            if second[2] < oldest:
                dropped += 1
                continue
            self._pending.setdefault(second, Counts()).add(counts)
        if dropped:
            log.warning("%d seconds of version measurements dropped: not written to "
                        "redis within their retention", dropped)

    async def window(self, alias: str, version: str, since: int, until: int) -> Window:
        if until <= since:
            return Window()
        minutes = range(since // 60, (until - 1) // 60 + 1)

        async def read() -> list[Any]:
            async with self._link.client.pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(self._key(alias, version, minute))
                result: list[Any] = await pipe.execute()
                return result

        try:
            hashes = await self._link.call("measure_read", read)
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("measurements").inc()
            return self._own.window(alias, version, since, until)
        total = Counts()
        for minute, fields in zip(minutes, hashes, strict=True):
            for name, value in fields.items():
                offset, _, kind = as_bytes(name).decode().partition(":")
                try:
                    second, count = minute * 60 + int(offset), int(value)
                    bucket = -1 if kind in ("n", "e") else int(kind)
                except ValueError:  # not a field of ours: left out
                    continue
                if not since <= second < until:
                    continue
                if kind == "n":
                    total.requests += count
                elif kind == "e":
                    total.errors += count
                else:
                    total.ttft[bucket] = total.ttft.get(bucket, 0) + count
        return Window(total.requests, total.errors, total.ttft)

    async def run_flushes(self) -> None:
        """Flush every ``flush_s`` until :meth:`stop` (a lifespan task; the flag as in
        :meth:`RedisLink.run_probes`)."""
        while not self._closing:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    def stop(self) -> None:
        self._closing = True
