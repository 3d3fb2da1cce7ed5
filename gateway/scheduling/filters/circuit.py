"""Filter ``circuit``: engines whose circuit breaker lets a request through."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.pipeline.context import RequestContext
from gateway.scheduling.interfaces import C
from gateway.scheduling.plugin_config import Params, PluginConfig, parse_params


class Circuit:
    """Keeps engines whose breaker is closed, or half-open with its probe not yet taken."""

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        return [c for c in candidates if c.breaker.available()]


def build(config: PluginConfig) -> Circuit:
    """The registry's factory for ``circuit``."""
    parse_params(config, Params)
    return Circuit()
