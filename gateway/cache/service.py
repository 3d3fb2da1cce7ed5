"""The response cache as the director's steps use it.

``lookup`` (after the limits, before admission): a stored answer (``hit``), an
identical request in flight to follow (``coalesced``), or nothing (``miss``: the
request leads a new flight). ``stored`` (a finish hook): the leader's answer goes to
the store when it is complete (a 200; every choice finished and a stream's ``[DONE]``,
or an embeddings answer's ``data`` list: :func:`whole`), and its flight lands, handing
followers the answer or the news that there is none. The director's chat and
completions and its passthrough's embeddings use the same steps.

Across replicas (a shared store with :class:`~gateway.stores.Locks`): a request that
leads a flight in its gateway also takes the replicas' lease on its key. When another
replica holds it, the request waits (at most ``follow_wait_s``, polling the store with
a short backoff) for that replica's answer to be stored, and hands it to its own
followers as one batch; when the lease ends without an answer (that leader failed,
or crashed and its lease expired) or the wait runs out, it makes its own call.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.cache.flights import Flight, Flights
from gateway.cache.policy import FIXED, CachePolicy
from gateway.config.settings import TimeoutSettings
from gateway.core.context import RequestContext
from gateway.core.endpoints import Endpoint
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import CachedResponse, Locks, ResponseCache

_INCOMPLETE = (None, "abort", "error")
"""finish_reason values of an answer that did not finish."""


class ResponseCaching:
    """Policy, store and flights of one gateway."""

    def __init__(self, policy: CachePolicy, store: ResponseCache, metrics: GatewayMetrics,
                 *, ttl_s: float, max_entry_bytes: int, coalesce: bool = True,
                 waits: TimeoutSettings | None = None, locks: Locks | None = None,
                 follow_wait_s: float = 30.0) -> None:
        self.policy = policy
        self.waits = waits or TimeoutSettings()
        """Bounds of a follower's waits: for the leader's first event
        (``first_token_s``), each next one (``between_tokens_s``), a whole non-streamed
        answer (``total_s``)."""
        self.store = store
        self.flights = Flights()
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._max_entry_bytes = max_entry_bytes
        self._coalesce = coalesce
        self._locks = locks if coalesce else None
        self._owner = uuid.uuid4().hex
        self._follow_wait_s = follow_wait_s

    async def lookup(self, ctx: RequestContext) -> CachedResponse | Flight | None:
        """What may answer ``ctx`` without an engine call (see the module docstring)."""
        use = ctx.cache
        use.key = key = self.policy.key(ctx)
        if key is None:
            return None
        found: CachedResponse | Flight | None = None
        if not use.no_cache:
            found = await self.store.get(key)
            if found is None and self._coalesce:
                found = self.flights.find(key)
        if isinstance(found, Flight):
            use.result = "coalesced"
            return found
        if found is not None:
            use.result = "hit"
            return found
        use.result = "miss"
        use.flight = self.flights.lead(key)
        if use.flight is not None and self._locks is not None and not use.no_cache:
            return await self._lead_or_wait(ctx, key, use.flight)
        return None

    async def _lead_or_wait(self, ctx: RequestContext, key: str, flight: Flight
                            ) -> CachedResponse | None:
        """Take the replicas' lease on ``key``, or wait for the replica that holds it."""
        assert self._locks is not None
        use = ctx.cache
        use.locked = await self._locks.acquire(key, self._owner, self._follow_wait_s)
        if use.locked:
            return None
        answer = await self._wait_elsewhere(key)
        if answer is None:  # that leader failed or is too slow: this one calls
            use.locked = await self._locks.acquire(key, self._owner, self._follow_wait_s)
            return None
        use.result, use.flight = "coalesced", None
        if answer.events:
            flight.append(list(answer.events))
        self.flights.land(flight, answer)
        return answer

    async def _wait_elsewhere(self, key: str) -> CachedResponse | None:
        """The answer another replica stores for ``key``; None when its lease ends
        without one, or after ``follow_wait_s``."""
        assert self._locks is not None
        pause = 0.005
        try:
            async with asyncio.timeout(self._follow_wait_s):
                while True:
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, 0.05)
                    found = await self.store.get(key)
                    if found is not None:
                        return found
                    if not await self._locks.held(key):
                        return await self.store.get(key)  # stored just before release
        except TimeoutError:
            return None

    def fall_back(self, ctx: RequestContext, *, follow: bool) -> Flight | None:
        """A follower whose leader failed (or took too long): with ``follow``, the flight
        that another follower leads now, if there is one; else (or when there is none)
        it makes its own call, leading a new flight when nobody else does (a miss)."""
        use = ctx.cache
        assert use.key is not None
        flight = self.flights.find(use.key) if follow else None
        if flight is not None:
            return flight
        use.result = "miss"
        use.flight = self.flights.lead(use.key)
        return None

    async def stored(self, ctx: RequestContext) -> None:
        """Finish hook: count the lookup's result (once per request, as it ended: a
        follower that had to make its own call is a miss); store a leader's complete
        answer, and land its flight."""
        use = ctx.cache
        if use.key is not None:
            self._metrics.cache_lookups.labels(ctx.label, ctx.version_label, use.result).inc()
        flight = use.flight
        if flight is None:
            return
        use.flight = None
        answer: CachedResponse | None = None
        assert use.key is not None
        try:
            answer = self._answer(ctx, flight)
            if answer is not None and not use.no_store and self._fits(answer):
                await self.store.put(use.key, answer, self._ttl_s)
        finally:
            self.flights.land(flight, answer)
            if use.locked and self._locks is not None:
                use.locked = False
                await self._locks.release(use.key, self._owner)

    def _answer(self, ctx: RequestContext, flight: Flight) -> CachedResponse | None:
        use = ctx.cache
        if ctx.outcome.status != "200" or not use.complete:
            return None
        if not ctx.stream:
            return CachedResponse(body=use.answer)
        events = tuple(event for batch in flight.batches for event in batch)
        return CachedResponse(events=events, usage=use.usage_event)

    def _fits(self, answer: CachedResponse) -> bool:
        return answer.size <= self._max_entry_bytes


def keep_answer(ctx: RequestContext, raw: bytes, answer: dict[str, Any]) -> None:
    """A leader's non-streamed answer (``raw``, decoded as ``answer``), kept for
    :meth:`ResponseCaching.stored` with whether it is whole: for chat and completions
    every choice finished, for embeddings a ``data`` list."""
    use = ctx.cache
    if use.flight is not None:
        use.answer, use.complete = raw, whole(ctx.endpoint, answer)


def whole(endpoint: Endpoint, answer: dict[str, Any]) -> bool:
    """Whether a non-streamed 200 answer of ``endpoint`` may be stored."""
    if endpoint.name in FIXED:
        return isinstance(answer.get("data"), list)
    return finished(answer)


def finished(answer: dict[str, Any]) -> bool:
    """A non-streamed answer is whole: it has choices, and every one finished."""
    choices = answer.get("choices")
    if not choices or not isinstance(choices, list):
        return False
    return all(isinstance(choice, dict) and choice.get("finish_reason") not in _INCOMPLETE
               for choice in choices)
