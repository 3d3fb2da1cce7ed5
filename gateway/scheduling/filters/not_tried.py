"""Filter ``not_tried``: engines this request has not been sent to yet."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.context import RequestContext
from gateway.scheduling.framework.interfaces import C
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class NotTried:
    """Keeps engines not in ``ctx.tried``: a retry or a continuation goes elsewhere."""

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        tried = ctx.tried
        if not tried:
            return list(candidates)
        return [c for c in candidates if c.name not in tried]


def build(config: PluginConfig) -> NotTried:
    """The registry's factory for ``not_tried``."""
    parse_params(config, Params)
    return NotTried()
