"""Filter ``serves_model``: engines whose model cards include the request's model."""

from __future__ import annotations

from collections.abc import Sequence

from adapters import AdapterSpec
from gateway.core.context import RequestContext
from gateway.core.errors import ModelNotFound, NoHealthyEngine, echo
from gateway.scheduling.framework.interfaces import C, Candidate
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class ServesModel:
    """Keeps the engines that serve (or last served) ``ctx.model``; for a registered
    LoRA adapter (``ctx.lora``), those that hold it, and those that could load it: they
    serve its base, have LoRA on, and take its rank.

    When none does, the request fails here: 404 ``model_not_found``, or 503 when no
    engine at all is healthy yet (the model may well exist once one is up). Put it first:
    it judges the model from the whole fleet it is given.
    """

    def filter(self, ctx: RequestContext, candidates: Sequence[C]) -> list[C]:
        model, spec = ctx.model, ctx.lora
        serving = [c for c in candidates if model in c.cards
                   or (spec is not None and can_load(c, spec))]
        if not serving:
            if not any(c.healthy for c in candidates):
                raise NoHealthyEngine("no engine is up yet; retry shortly")
            if spec is not None:
                raise NoHealthyEngine(
                    f"adapter '{spec.name}' needs an engine serving '{spec.base}' with LoRA "
                    "on (vLLM's --enable-lora) and its rank; none is up")
            raise ModelNotFound(f"The model '{echo(model)}' does not exist.", param="model")
        return serving


def can_load(engine: Candidate, spec: AdapterSpec) -> bool:
    """Whether ``engine`` could load the adapter: its base, LoRA on, the rank taken."""
    bound, rank = engine.lora_bound, engine.max_lora_rank
    return (spec.base in engine.cards and bound is not None and bound > 0
            and (rank is None or spec.rank is None or spec.rank <= rank))


def build(config: PluginConfig) -> ServesModel:
    """The registry's factory for ``serves_model``."""
    parse_params(config, Params)
    return ServesModel()
