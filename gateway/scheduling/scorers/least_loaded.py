"""Scorer ``least_loaded``: (max load - load) / (max load - min load)."""

from __future__ import annotations

from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class LeastLoaded:
    """1 for the least loaded candidates, 0 for the most loaded; all 1 when even."""

    def score(self, cycle: Cycle) -> Scores:
        loads = cycle.loads
        low, high = min(loads), max(loads)
        if high == low:
            return Scores([1.0] * len(loads), "even")
        return Scores([(high - load) / (high - low) for load in loads], "least_loaded")


def build(config: PluginConfig) -> LeastLoaded:
    """The registry's factory for ``least_loaded``."""
    parse_params(config, Params)
    return LeastLoaded()
