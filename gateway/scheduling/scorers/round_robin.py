"""Scorer ``round_robin``: 1 for the next engine in rotation, 0 for the others."""

from __future__ import annotations

from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class RoundRobin:
    """Each pass of a model favours the next candidate in turn."""

    def score(self, cycle: Cycle) -> Scores:
        n = len(cycle.candidates)
        chosen = cycle.turn % n
        return Scores([1.0 if i == chosen else 0.0 for i in range(n)], "rotation")


def build(config: PluginConfig) -> RoundRobin:
    """The registry's factory for ``round_robin``."""
    parse_params(config, Params)
    return RoundRobin()
