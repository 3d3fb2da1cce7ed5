"""Filter ``circuit``: engines whose circuit breaker lets a request through, within a
cap on how much of a model's fleet breakers may take out at once.

As Envoy's outlier detection does with ``max_ejection_percent``: breakers may eject at
most that share of the healthy engines serving the model (and always at least one).
Past it — a request that trips an engine bug opening breaker after breaker, say — the
engines open longest stay out and the rest are routed to anyway: a degraded fleet
answers, where ejecting everything would answer 503 to every client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from gateway.core.context import RequestContext
from gateway.scheduling.framework.interfaces import C
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class CircuitParams(Params):
    max_ejection_percent: float = Field(default=50.0, ge=0, le=100)


class Circuit:
    """Keeps engines whose breaker is closed, or half-open with its probe not yet taken;
    past the ejection cap, also the most recently opened ones."""

    def __init__(self, max_ejection_percent: float = 50.0) -> None:
        self.max_ejection_percent = max_ejection_percent

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        ejected = [c for c in candidates if not c.breaker.available()]
        if not ejected:
            return list(candidates)
        cap = max(1, math.floor(len(candidates) * self.max_ejection_percent / 100))
        if len(ejected) > cap:
            ejected.sort(key=lambda c: c.breaker.opened_at or 0.0)
            ejected = ejected[:cap]
        out = {c.name for c in ejected}
        return [c for c in candidates if c.name not in out]


def build(config: PluginConfig) -> Circuit:
    """The registry's factory for ``circuit``."""
    return Circuit(parse_params(config, CircuitParams).max_ejection_percent)
