"""Filter ``healthy``: engines that passed their last health check."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.context import RequestContext
from gateway.scheduling.framework.interfaces import C
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class Healthy:
    """Keeps the engines that are up."""

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        return [c for c in candidates if c.healthy]


def build(config: PluginConfig) -> Healthy:
    """The registry's factory for ``healthy``."""
    parse_params(config, Params)
    return Healthy()
