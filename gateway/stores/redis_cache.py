"""The response cache in Redis: one key per entry, expiring with its TTL.

An entry is its body or its events in a small binary frame (a kind byte, then 4-byte
big-endian lengths before each part; a stream stored with its usage chunk has kind
``S`` and that chunk as its first part). Entries past ``cache_max_entry_bytes`` are not
stored. While Redis is down both reads and writes are skipped (a miss, not an error):
the request goes to an engine as if the cache were empty.
"""

from __future__ import annotations

import struct

from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import CachedResponse, StoreUnavailable
from gateway.stores.redis_link import RedisLink, as_bytes

_LENGTH = struct.Struct(">I")


def encode(value: CachedResponse) -> bytes:
    if value.body is not None:
        return b"B" + value.body
    parts = value.events if value.usage is None else (value.usage, *value.events)
    kind = b"E" if value.usage is None else b"S"
    return kind + b"".join(_LENGTH.pack(len(part)) + part for part in parts)


def decode(raw: bytes) -> CachedResponse:
    if raw[:1] == b"B":
        return CachedResponse(body=raw[1:])
    if raw[:1] not in (b"E", b"S"):
        raise ValueError("not a cached response")
    events, at = [], 1
    while at < len(raw):
        (size,) = _LENGTH.unpack_from(raw, at)
        at += _LENGTH.size
        events.append(raw[at:at + size])
        at += size
    if at != len(raw):
        raise ValueError("truncated cached response")
    if raw[:1] == b"S":
        if not events:
            raise ValueError("truncated cached response")
        return CachedResponse(events=tuple(events[1:]), usage=events[0])
    return CachedResponse(events=tuple(events))


class RedisCache:
    """The :class:`~gateway.stores.ResponseCache` protocol over Redis."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self._max_bytes = link.settings.cache_max_entry_bytes

    async def get(self, key: str) -> CachedResponse | None:
        try:
            raw = await self._link.call("cache_get",
                                        lambda: self._link.client.get(self._link.key("cache", key)))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("cache").inc()
            return None
        if raw is None:
            return None
        try:
            return decode(as_bytes(raw))
        except (ValueError, struct.error) as exc:  # not ours, or cut: a miss
            self._link.failed("cache_decode", exc)
            return None

    async def put(self, key: str, value: CachedResponse, ttl_s: float) -> None:
        raw = encode(value)
        ttl_ms = int(ttl_s * 1000)
        if len(raw) > self._max_bytes or ttl_ms <= 0:
            return
        try:
            await self._link.call("cache_put", lambda: self._link.client.set(
                self._link.key("cache", key), raw, px=ttl_ms))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("cache").inc()
