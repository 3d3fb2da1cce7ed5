"""Guarded rollouts in Redis: each alias's latest rollout and the lease on driving it.

Layout (``P`` is the key prefix)::

    P rollout:<alias>             hash    state -> running, done, ...; record -> JSON
                                          of the plan and where it stands
    P rollout-decisions:<alias>   list    its decisions (JSON), oldest first
    P rollout-lease:<alias>       string  the driving replica's id, expiring (PX)

Every write is one Lua script, so a start while one runs, an owner's update, a cancel
and a takeover cannot interleave: a start refuses while the state is ``running``; an
update writes only while the rollout runs and no other replica holds the lease (and
renews it); a cancel sets the state and ends the lease, so the owner's next update
finds it stopped; a takeover is ``SET NX PX`` of the lease of a running rollout. While
Redis is down every call raises :class:`StoreUnavailable` (a rollout only one replica
saw would not be shared); a Redis that restarts empty has lost the rollout, and its
driver stops at its next update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.stores.protocols import Held, RolloutRecord
from gateway.stores.redis_link import RedisLink, as_bytes
from gateway.stores.redis_locks import RELEASE
from gateway.stores.redis_versions import policy_fields, policy_from

START = """
if redis.call('HGET', KEYS[1], 'state') == 'running' then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'running', 'record', ARGV[1])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 1
"""
"""KEYS: record, decisions, lease. ARGV: record, owner, lease_ms, decisions..."""

UPDATE = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 2 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'record', ARGV[4])
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if ARGV[3] == 'running' then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
elseif holder then redis.call('DEL', KEYS[3]) end
return 1
"""
"""KEYS: record, decisions, lease. ARGV: owner, lease_ms, state, record, decisions...
1 written, 0 another replica holds the lease, 2 no longer running."""

CANCEL = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""
"""KEYS: record, decisions, lease. ARGV: the decision."""

TAKE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
"""KEYS: record, lease. ARGV: owner, lease_ms."""


_HELD: dict[int, Held] = {0: "lost", 1: "held", 2: "stopped"}


def encode(record: RolloutRecord) -> bytes:
    """The record but its state and decisions (kept apart)."""
    return orjson.dumps({
        "alias": record.alias, "to": record.to, "base": record.base,
        "steps": list(record.steps), "hold_s": record.hold_s,
        "before": policy_fields(record.before), "started_at": record.started_at,
        "step": record.step, "step_started": record.step_started,
        "written": None if record.written is None else policy_fields(record.written),
        "owner": record.owner})


def decode(raw: bytes, state: str, decisions: Sequence[bytes]) -> RolloutRecord:
    data = orjson.loads(raw)
    written = data.get("written")
    return RolloutRecord(
        alias=data["alias"], to=data["to"], base=data["base"],
        steps=tuple(data["steps"]), hold_s=data["hold_s"], before=policy_from(data["before"]),
        started_at=data["started_at"], state=state, step=data["step"],
        step_started=data["step_started"],
        written=None if written is None else policy_from(written), owner=data["owner"],
        decisions=tuple(orjson.loads(d) for d in decisions))


class RedisRollouts:
    """The :class:`~gateway.stores.RolloutRecords` protocol over Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        client = link.client
        self._start = client.register_script(START)
        self._update = client.register_script(UPDATE)
        self._cancel = client.register_script(CANCEL)
        self._take = client.register_script(TAKE)
        self._release = client.register_script(RELEASE)

    def _keys(self, alias: str) -> list[str]:
        return [self._link.key("rollout", alias), self._link.key("rollout-decisions", alias),
                self._link.key("rollout-lease", alias)]

    async def get(self, alias: str) -> RolloutRecord | None:
        record, decisions, _ = self._keys(alias)

        async def read() -> list[Any]:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(record)
                pipe.lrange(decisions, 0, -1)
                result: list[Any] = await pipe.execute()
                return result

        fields, listed = await self._link.call("rollout_get", read)
        fields = {as_bytes(k): as_bytes(v) for k, v in fields.items()}
        if b"record" not in fields:
            return None
        try:
            return decode(fields[b"record"], fields.get(b"state", b"").decode(),
                          [as_bytes(d) for d in listed])
        except (ValueError, KeyError, TypeError) as exc:  # not ours: as if none
            self._link.failed("rollout_decode", exc)
            return None

    async def start(self, record: RolloutRecord, owner: str, lease_s: float) -> bool:
        args: list[bytes | str | int] = [encode(record), owner, _ms(lease_s),
                                         *map(orjson.dumps, record.decisions)]
        started = await self._link.call("rollout_start", lambda: self._start(
            keys=self._keys(record.alias), args=args))
        return bool(int(started))

    async def update(self, record: RolloutRecord, owner: str, lease_s: float,
                     decisions: Sequence[dict[str, Any]] = ()) -> Held:
        args: list[bytes | str | int] = [owner, _ms(lease_s), record.state, encode(record),
                                         *map(orjson.dumps, decisions)]
        held = await self._link.call("rollout_update", lambda: self._update(
            keys=self._keys(record.alias), args=args))
        return _HELD[int(held)]

    async def cancel(self, alias: str, decision: dict[str, Any]) -> bool:
        cancelled = await self._link.call("rollout_cancel", lambda: self._cancel(
            keys=self._keys(alias), args=[orjson.dumps(decision)]))
        return bool(int(cancelled))

    async def take(self, alias: str, owner: str, lease_s: float) -> bool:
        record, _, lease = self._keys(alias)
        taken = await self._link.call("rollout_take", lambda: self._take(
            keys=[record, lease], args=[owner, _ms(lease_s)]))
        return bool(int(taken))

    async def release(self, alias: str, owner: str) -> None:
        lease = self._keys(alias)[2]
        await self._link.call("rollout_release",
                              lambda: self._release(keys=[lease], args=[owner]))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
