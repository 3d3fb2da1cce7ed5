"""Version policies in Redis, and change notifications for the other replicas.

``P version:<alias>`` holds the current policy (JSON) and ``P version-history:<alias>``
the earlier ones, newest first, trimmed to ``history_size``. ``set`` and ``rollback``
are each one Lua script (so atomic) that also publishes the alias on ``P versions``:
:func:`watch_versions` turns that channel into calls of a reload function.

While Redis is down ``get`` answers the last policy this replica read or wrote (the
gateway keeps routing as it did); ``set``, ``rollback`` and ``history`` raise
:class:`StoreUnavailable`, since a change only one replica saw would split the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.core.policy import VersionPolicy
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable
from gateway.stores.redis_link import RedisLink, as_bytes, watch_channel

log = logging.getLogger("sluice.redis")

SET = """
local old = redis.call('GET', KEYS[1])
if old then
  redis.call('LPUSH', KEYS[2], old)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[3])
"""
"""KEYS: current, history, channel. ARGV: policy, history size, alias."""

ROLLBACK = """
local previous = redis.call('LPOP', KEYS[2])
if not previous then return false end
redis.call('SET', KEYS[1], previous)
redis.call('PUBLISH', KEYS[3], ARGV[1])
return previous
"""
"""KEYS: current, history, channel. ARGV: alias."""


def policy_fields(policy: VersionPolicy) -> dict[str, Any]:
    """A policy as stored (JSON), here and inside a rollout's record."""
    return {"weights": policy.weights, "shadow": policy.shadow}


def policy_from(data: dict[str, Any]) -> VersionPolicy:
    return VersionPolicy(weights=dict(data.get("weights", {})),
                         shadow=dict(data.get("shadow", {})))


def encode(policy: VersionPolicy) -> bytes:
    return orjson.dumps(policy_fields(policy))


def decode(raw: bytes) -> VersionPolicy:
    return policy_from(orjson.loads(raw))


class RedisVersionPolicies:
    """The :class:`~gateway.stores.VersionPolicies` protocol over Redis."""

    def __init__(self, link: RedisLink, metrics: GatewayMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self._size = link.settings.history_size
        self._set = link.client.register_script(SET)
        self._rollback = link.client.register_script(ROLLBACK)
        self._known: dict[str, VersionPolicy | None] = {}
        self.channel = link.key("versions")

    def _keys(self, alias: str) -> list[str]:
        return [self._link.key("version", alias), self._link.key("version-history", alias),
                self.channel]

    async def get(self, alias: str) -> VersionPolicy | None:
        try:
            raw = await self._link.call(
                "versions_get", lambda: self._link.client.get(self._keys(alias)[0]))
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("versions").inc()
            return self._known.get(alias)
        self._known[alias] = policy = None if raw is None else decode(as_bytes(raw))
        return policy

    async def set(self, alias: str, policy: VersionPolicy) -> None:
        await self._link.call("versions_set", lambda: self._set(
            keys=self._keys(alias), args=[encode(policy), self._size, alias]))
        self._known[alias] = policy

    async def history(self, alias: str) -> list[VersionPolicy]:
        raws = await self._link.call("versions_history", lambda: self._link.client.lrange(
            self._keys(alias)[1], 0, self._size - 1))
        return [decode(as_bytes(raw)) for raw in raws]

    async def rollback(self, alias: str) -> VersionPolicy | None:
        raw = await self._link.call("versions_rollback", lambda: self._rollback(
            keys=self._keys(alias), args=[alias]))
        if raw is None:
            return None
        self._known[alias] = policy = decode(as_bytes(raw))
        return policy


Reload = Callable[[str | None], Awaitable[None]]
"""Called with the alias whose policy changed, or None: reload every alias (after each
(re)subscription, since changes published while unsubscribed are lost)."""


async def watch_versions(link: RedisLink, channel: str, reload: Reload, *,
                         poll_s: float = 1.0) -> None:
    """Call ``reload`` for every change published on ``channel``, forever (a lifespan
    task; see :func:`~gateway.stores.redis_link.watch_channel`)."""
    await watch_channel(link, channel, reload, op="versions_watch", poll_s=poll_s)
