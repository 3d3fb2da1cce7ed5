"""Per-model admission: refuse with 429 and ``Retry-After`` when a model's fleet is full.

The limit is ``max_in_flight_per_engine`` x the healthy engines serving the model (so
it shrinks when engines fail and grows when they come back), or a fixed per-model
number. Past it, queueing in the gateway would only add latency the client cannot see
coming; a 429 lets the client back off or go elsewhere.
"""

from __future__ import annotations

from gateway.errors import Overloaded
from gateway.fleet_settings import AdmissionSettings


class Admission:
    """In-flight counts per model, checked on arrival, released when a request ends."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self._settings = settings
        self._in_flight: dict[str, int] = {}

    def limit(self, model: str, healthy_engines: int) -> int:
        fixed = self._settings.models.get(model)
        if fixed is not None:
            return fixed
        return self._settings.max_in_flight_per_engine * healthy_engines

    def in_flight(self, model: str) -> int:
        return self._in_flight.get(model, 0)

    def enter(self, model: str, healthy_engines: int) -> None:
        """Count one request in, or raise :class:`Overloaded`. With no healthy engine
        the request is let through: routing answers it (503) more precisely."""
        count = self._in_flight.get(model, 0)
        if healthy_engines and count >= self.limit(model, healthy_engines):
            raise Overloaded(
                f"'{model}' is at its limit of {count} requests in flight; retry later",
                retry_after_s=self._settings.retry_after_s)
        self._in_flight[model] = count + 1

    def leave(self, model: str) -> None:
        count = self._in_flight.get(model, 0) - 1
        if count > 0:
            self._in_flight[model] = count
        else:
            self._in_flight.pop(model, None)
