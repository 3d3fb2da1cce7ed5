"""Filter ``serves_model``: engines whose model cards include the request's model."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.context import RequestContext
from gateway.core.errors import ModelNotFound, NoHealthyEngine, echo
from gateway.scheduling.framework.interfaces import C
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class ServesModel:
    """Keeps the engines that serve (or last served) ``ctx.model``.

    When none does, the request fails here: 404 ``model_not_found``, or 503 when no
    engine at all is healthy yet (the model may well exist once one is up). Put it first:
    it judges the model from the whole fleet it is given.
    """

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        model = ctx.model
        serving = [c for c in candidates if model in c.cards]
        if not serving:
            if not any(c.healthy for c in candidates):
                raise NoHealthyEngine("no engine is up yet; retry shortly")
            raise ModelNotFound(f"The model '{echo(model)}' does not exist.", param="model")
        return serving


def build(config: PluginConfig) -> ServesModel:
    """The registry's factory for ``serves_model``."""
    parse_params(config, Params)
    return ServesModel()
