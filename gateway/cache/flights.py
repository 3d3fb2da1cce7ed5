"""Identical requests in flight share one upstream call (in one gateway).

The first cacheable request with a key leads a :class:`Flight`; an identical request
that arrives while it runs follows it instead of calling an engine. The leader appends
each batch of event payloads it relays (the list it already has: one ``append`` per
read, nothing copied), or its JSON answer; followers read the same batches by index.
There is one log per flight, shared by every follower, never a queue per follower:
memory is one copy of the answer however many follow it, and a slow follower holds up
nobody. A follower waits a bounded time for each next batch.

When the leader ends without a complete answer the flight is closed as failed: a
follower that has sent nothing yet makes its own call; one already streaming ends
with an error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.stores import CachedResponse


class FlightFailed(Exception):
    """The leader ended without a complete answer."""


class Flight:
    """One upstream answer being made, readable by any number of followers."""

    __slots__ = ("_closed", "_wake", "batches", "key", "result")

    def __init__(self, key: str) -> None:
        self.key = key
        self.batches: list[list[bytes]] = []
        self.result: CachedResponse | None = None
        """Set when the answer is complete (the usage event included)."""
        self._closed = False
        self._wake: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, batch: list[bytes]) -> None:
        """The leader relayed ``batch`` (kept as is: the caller must not change it)."""
        self.batches.append(batch)
        if self._wake is not None:
            self._wake.set_result(None)
            self._wake = None

    def close(self, result: CachedResponse | None) -> None:
        """The leader ended: with its complete answer, or None when it failed."""
        self.result = result
        self._closed = True
        if self._wake is not None:
            self._wake.set_result(None)
            self._wake = None

    async def _changed(self, timeout_s: float) -> None:
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self._wake)

    async def answer(self, timeout_s: float) -> CachedResponse:
        """The complete answer; :class:`FlightFailed` when the leader failed,
        ``TimeoutError`` past ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not self._closed:
                await self._changed(timeout_s)
        if self.result is None:
            raise FlightFailed(self.key)
        return self.result

    async def head(self, timeout_s: float) -> list[bytes]:
        """The first batch; :class:`FlightFailed` when the leader failed before it,
        ``TimeoutError`` when it takes longer than ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not self.batches:
                if self._closed:
                    raise FlightFailed(self.key)
                await self._changed(timeout_s)
        return self.batches[0]

    async def rest(self, between_s: float) -> AsyncIterator[list[bytes]]:
        """The batches after the first, as they come (each within ``between_s``);
        :class:`FlightFailed` when the leader fails mid-way."""
        at = 1
        while True:
            while at < len(self.batches):
                yield self.batches[at]
                at += 1
            if self._closed:
                if self.result is None:
                    raise FlightFailed(self.key)
                return
            await self._changed(between_s)


class Flights:
    """The flights of one gateway, by cache key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def find(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def lead(self, key: str) -> Flight | None:
        """A new flight for ``key``, None when one is already in the air."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight(key)
        return flight

    def land(self, flight: Flight, result: CachedResponse | None) -> None:
        """Close ``flight`` and forget it."""
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        flight.close(result)
