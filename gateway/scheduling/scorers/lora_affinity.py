"""Scorer ``lora_affinity``: for a request naming a registered LoRA adapter, engines that
hold it first, then those with a free adapter slot, then those that must unload an idle
adapter, and last those whose every adapter is in use (the load would wait).

Scores: 1 (holds it), 0.5 (a free slot), 0.25 (an idle adapter to unload), 0 (full and
busy). Requests naming no adapter score 1 everywhere (no say). Beside ``least_loaded``
at weight 1, its default weight 2 (``lora.affinity_weight``) keeps an adapter's requests
on its engine until that engine is the most loaded and another with a free slot the
least: then the adapter is loaded there too (a hot adapter gets a second engine).
"""

from __future__ import annotations

from gateway.scheduling.framework.interfaces import Candidate, Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


def slot_score(engine: Candidate, adapter: str) -> float:
    """One engine's score for ``adapter`` (see the module doc)."""
    if adapter in engine.cards:
        return 1.0
    bound, held = engine.lora_bound, engine.adapters
    if bound is None or len(held) < bound:
        return 0.5
    busy = engine.lora_busy
    return 0.25 if any(name not in busy for name in held) else 0.0


class LoraAffinity:
    """Prefers the engines that hold the request's adapter (see the module doc)."""

    def score(self, cycle: Cycle) -> Scores:
        spec = cycle.ctx.lora
        if spec is None:
            return Scores([1.0] * len(cycle.candidates), "no_adapter")
        values = [slot_score(c, spec.name) for c in cycle.candidates]
        return Scores(values, "lora_affinity" if 1.0 in values else "lora_load",
                      affinity=1.0 in values)


def build(config: PluginConfig) -> LoraAffinity:
    """The registry's factory for ``lora_affinity``."""
    parse_params(config, Params)
    return LoraAffinity()
