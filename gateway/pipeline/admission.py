"""Per-model admission: refuse with 429 and ``Retry-After`` when a model's fleet is full.

The limit is ``max_in_flight_per_engine`` x the healthy engines serving the model (so
it shrinks when engines fail and grows when they come back), or a fixed per-model
number. Past it, queueing in the gateway would only add latency the client cannot see
coming; a 429 lets the client back off or go elsewhere. The counts live in the
:class:`~gateway.stores.Counters` store, so a shared backend makes the limit hold across
gateway replicas.
"""

from __future__ import annotations

from gateway.config.fleet import AdmissionSettings
from gateway.core.errors import Overloaded, echo
from gateway.stores import Counters


class Admission:
    """In-flight counts per model, taken on arrival and given back when a request ends."""

    def __init__(self, settings: AdmissionSettings, counters: Counters) -> None:
        self._settings = settings
        self._counters = counters

    def reconfigure(self, settings: AdmissionSettings) -> None:
        """Limits from ``settings`` for the next requests (a config reload); requests
        already in are counted as before."""
        self._settings = settings

    def limit(self, model: str, healthy_engines: int) -> int:
        fixed = self._settings.models.get(model)
        if fixed is not None:
            return fixed
        return self._settings.max_in_flight_per_engine * healthy_engines

    @staticmethod
    def _key(model: str) -> str:
        return f"admission:{model}"

    async def in_flight(self, model: str) -> int:
        return await self._counters.value(self._key(model))

    async def enter(self, model: str, healthy_engines: int) -> bool:
        """Count one request in (True), or raise :class:`Overloaded`. With no healthy
        engine nothing is counted (False): routing answers it (503) more precisely."""
        if not healthy_engines:
            return False
        limit = self.limit(model, healthy_engines)
        if not await self._counters.acquire(self._key(model), limit):
            raise Overloaded(
                f"'{echo(model)}' is at its limit of {limit} requests in flight; retry later",
                retry_after_s=self._settings.retry_after_s)
        return True

    async def leave(self, model: str) -> None:
        await self._counters.release(self._key(model))
