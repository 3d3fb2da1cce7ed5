"""Registered LoRA adapters in Redis: one hash, ``P adapters`` (name -> the spec's JSON).

A change is written and published (``P adapters:changed``) in one transaction, so that
every replica re-reads the registry at once (:func:`gateway.stores.redis_link.watch_channel`);
a replica also re-reads it at every reconcile. Reads fail with ``StoreUnavailable``
while Redis is down: the registry then keeps what it read last.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from adapters import AdapterSpec
from gateway.stores.redis_link import RedisLink, as_bytes

log = logging.getLogger("sluice.redis")


class RedisAdapterRegistrations:
    """The :class:`~gateway.stores.AdapterRegistrations` protocol over Redis."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._key = link.key("adapters")
        self.channel = link.key("adapters", "changed")

    async def all(self) -> list[AdapterSpec]:
        fields = await self._link.call(
            "adapters_read", lambda: self._link.client.hgetall(self._key))
        specs = []
        for name, raw in fields.items():
            try:
                specs.append(AdapterSpec.model_validate_json(as_bytes(raw)))
            except ValidationError:  # not written by a gateway: left out, said once
                log.warning("registered adapter %r in redis is not valid; ignored",
                            as_bytes(name)[:100])
        return specs

    async def put(self, spec: AdapterSpec) -> None:
        await self._change("adapters_write", spec.name, spec.model_dump_json())

    async def remove(self, name: str) -> bool:
        removed: int = await self._change("adapters_write", name, None)
        return removed > 0

    async def _change(self, op: str, name: str, value: str | None) -> int:
        async def write() -> int:
            async with self._link.client.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.hdel(self._key, name)
                else:
                    pipe.hset(self._key, name, value)
                pipe.publish(self.channel, name)
                done = await pipe.execute()
            return int(done[0])

        result: int = await self._link.call(op, write)
        return result
