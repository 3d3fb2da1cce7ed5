"""Redis backends of the key store and the rate limiter: many gateway processes share
every key and each key's windows.

Layout (``P`` is the key prefix)::

    P apikey:<id>         hash   the record's fields
    P apikeys:digests     hash   SHA-256 digest -> key id
    P apikeys:ids         zset   key id -> creation time (listing order)
    P limit:<id>:rpm      zset   admission times of the last minute (Redis clock, s)
    P limit:<id>:tpm      hash   whole second -> tokens charged in it

:meth:`RedisRateLimiter.admit` is one Lua script, with Redis ``TIME`` as the clock every
gateway shares: trim both windows, check RPM then TPM, record the admission only when
both allow it. :meth:`RedisRateLimiter.charge` is ``HINCRBY`` + ``EXPIRE`` on the same
clock. The windows' math is :class:`~gateway.keys.memory.MemoryRateLimiter`'s.

``revoke`` is one Lua script that also publishes the key id on ``P apikeys:revoked``:
each replica's :class:`~gateway.keys.outage.LastKnownKeys` reads that key again, so
that a record it remembers for an outage is never one revoked elsewhere.

The backends themselves raise :class:`~gateway.stores.protocols.StoreUnavailable` while
Redis is down (a charge too). :func:`redis_keys` puts them behind the outage fallbacks of
:mod:`gateway.keys.outage`: a key this replica has read before authenticates with its
last known record (a key it has not is a 503), and the limits follow ``redis.fail_open``.
Open (the default) counts each key's RPM and TPM in this replica alone while Redis is
down, so N replicas admit up to N times a limit, never without one: an outage of the
state store should cost the limits their precision, not every keyed client its service.
Closed refuses with 503 and ``Retry-After`` (for limits that must never be exceeded,
such as a paid quota).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal, cast

from redis.commands.core import AsyncScript

from gateway.core.keys import ApiKey, Limits
from gateway.keys.memory import MemoryRateLimiter
from gateway.keys.outage import LastKnownKeys, OutageLimiter
from gateway.keys.protocols import ALLOWED, WINDOW_S, Decision
from gateway.keys.service import KeyService
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.redis_link import RedisLink, as_bytes, watch_channel

Clock = Callable[[], float]

_NOW = """
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1])
else local t = redis.call('TIME') now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
"""
"""``now`` in seconds: Redis ``TIME``, or ARGV[1] when given (a test's clock)."""

ADMIT = _NOW + """
local window = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    local frees = now + window
    if oldest[2] then frees = tonumber(oldest[2]) + window end
    return {0, 'rpm', tostring(frees - now)}
  end
end
if tpm >= 0 then
  local fields = redis.call('HGETALL', KEYS[2])
  local spent = 0
  local buckets = {}
  for i = 1, #fields, 2 do
    local second = tonumber(fields[i])
    if second + 1 + window <= now then redis.call('HDEL', KEYS[2], fields[i])
    else
      local tokens = tonumber(fields[i + 1])
      spent = spent + tokens
      buckets[#buckets + 1] = {second, tokens}
    end
  end
  if spent >= tpm then
    table.sort(buckets, function(a, b) return a[1] < b[1] end)
    local left = spent
    for _, bucket in ipairs(buckets) do
      left = left - bucket[2]
      if left < tpm then return {0, 'tpm', tostring(bucket[1] + 1 + window - now)} end
    end
  end
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, tostring(now) .. ':' .. ARGV[5])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 2)
end
return {1}
"""
"""KEYS: rpm zset, tpm hash. ARGV: now or '', window, rpm, tpm (-1: none), a unique
member suffix. ``{1}`` when admitted, else ``{0, limit, retry-after seconds}``."""

CHARGE = _NOW + """
local second = math.floor(now)
redis.call('HINCRBY', KEYS[1], tostring(second), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 2)
"""
"""KEYS: tpm hash. ARGV: now or '', window, tokens."""

ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""
"""KEYS: record, digests, ids. ARGV: digest, id, created, then the record's fields."""

FIND = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {} end
return redis.call('HGETALL', ARGV[2] .. id)
"""
"""KEYS: digests. ARGV: digest, the record keys' prefix. The record (flat), or empty:
one round trip for the lookup every request with a managed key makes (the record's key
is known only once the digest is read, hence built here)."""

REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""
"""KEYS: record, channel. ARGV: time, key id. The record as it now is (the first
revocation kept)."""


def _fields(key: ApiKey) -> dict[str, str]:
    fields = {"id": key.id, "name": key.name, "key_hash": key.key_hash,
              "models": json.dumps(list(key.models)), "created": repr(key.created)}
    for name, value in (("rpm", key.rpm), ("tpm", key.tpm)):
        if value is not None:
            fields[name] = str(value)
    if key.revoked_at is not None:
        fields["revoked_at"] = repr(key.revoked_at)
    return fields


def _record(raw: dict[bytes | str, bytes | str] | list[bytes | str]) -> ApiKey:
    if isinstance(raw, list):  # HGETALL from a script: a flat list
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    fields = {as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()}
    rpm, tpm, revoked = fields.get("rpm"), fields.get("tpm"), fields.get("revoked_at")
    return ApiKey(fields["id"], fields["name"], fields["key_hash"],
                  tuple(json.loads(fields["models"])),
                  None if rpm is None else int(rpm), None if tpm is None else int(tpm),
                  created=float(fields["created"]),
                  revoked_at=None if revoked is None else float(revoked))


class RedisKeyStore:
    """The :class:`~gateway.keys.KeyStore` protocol over Redis (see the module doc)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        client = link.client
        self._add: AsyncScript = client.register_script(ADD)
        self._revoke: AsyncScript = client.register_script(REVOKE)
        self._find: AsyncScript = client.register_script(FIND)
        self._digests = link.key("apikeys", "digests")
        self._ids = link.key("apikeys", "ids")
        self.channel = link.key("apikeys", "revoked")
        """Where revocations are published (the key id)."""

    def _key(self, key_id: str) -> str:
        return self._link.key("apikey", key_id)

    async def add(self, key: ApiKey) -> None:
        fields = [part for pair in _fields(key).items() for part in pair]
        added = await self._link.call("keys-add", lambda: self._add(
            keys=[self._key(key.id), self._digests, self._ids],
            args=[key.key_hash, key.id, repr(key.created), *fields]))
        if not int(added):
            raise ValueError(f"key {key.id} is already stored")

    async def find(self, key_hash: str) -> ApiKey | None:
        raw = await self._link.call("keys-find", lambda: self._find(
            keys=[self._digests], args=[key_hash, self._key("")]))
        return _record(raw) if raw else None

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self._link.call(
            "keys-get", lambda: self._link.client.hgetall(self._key(key_id)))
        return _record(raw) if raw else None

    async def all(self) -> list[ApiKey]:
        async def read() -> list[ApiKey]:
            ids = await self._link.client.zrange(self._ids, 0, -1)
            async with self._link.client.pipeline(transaction=False) as pipe:
                for key_id in cast(list[bytes], ids):
                    pipe.hgetall(self._key(key_id.decode()))
                records = await pipe.execute()
            return [_record(raw) for raw in records if raw]
        return await self._link.call("keys-all", read)

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        raw = await self._link.call("keys-revoke", lambda: self._revoke(
            keys=[self._key(key_id), self.channel], args=[repr(at), key_id]))
        return _record(raw) if raw else None


class RedisRateLimiter:
    """The :class:`~gateway.keys.RateLimiter` protocol over Redis (see the module doc).

    ``clock`` replaces Redis ``TIME`` (tests step a fake clock through the windows)."""

    def __init__(self, link: RedisLink, *, clock: Clock | None = None) -> None:
        self._link = link
        self._clock = clock
        client = link.client
        self._admit: AsyncScript = client.register_script(ADMIT)
        self._charge: AsyncScript = client.register_script(CHARGE)
        self._member = uuid.uuid4().hex[:12]
        self._sequence = itertools.count()

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        if not limits.any:
            return ALLOWED
        member = f"{self._member}-{next(self._sequence)}"
        args: list[str | int] = [self._now(), repr(WINDOW_S),
                                 -1 if limits.rpm is None else limits.rpm,
                                 -1 if limits.tpm is None else limits.tpm, member]
        answer = await self._link.call("keys-admit", lambda: self._admit(
            keys=[self._link.key("limit", key_id, "rpm"),
                  self._link.key("limit", key_id, "tpm")], args=args))
        reply = cast(list[bytes], answer)
        if int(reply[0]):
            return ALLOWED
        limit = cast(Literal["rpm", "tpm"], reply[1].decode())
        return Decision(False, limit, float(reply[2]))

    async def charge(self, key_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        args: list[str | int] = [self._now(), repr(WINDOW_S), tokens]
        await self._link.call("keys-charge", lambda: self._charge(
            keys=[self._link.key("limit", key_id, "tpm")], args=args))


def redis_keys(link: RedisLink, metrics: GatewayMetrics
               ) -> tuple[KeyService, Coroutine[Any, Any, None]]:
    """The key service over Redis behind its outage fallbacks (see the module doc), and
    the lifespan task that applies revocations published by any replica to the records
    this one remembers."""
    settings = link.settings
    store = RedisKeyStore(link)
    known = LastKnownKeys(store, metrics, size=settings.known_keys)
    limiter = OutageLimiter(RedisRateLimiter(link), MemoryRateLimiter(), metrics,
                            fail_open=settings.fail_open)
    service = KeyService(known, limiter)

    async def revoked(key_id: str | None) -> None:
        await service.revoked_elsewhere(key_id)
        await known.reload(key_id)

    watch = watch_channel(link, store.channel, revoked, op="keys_watch")
    return service, watch
