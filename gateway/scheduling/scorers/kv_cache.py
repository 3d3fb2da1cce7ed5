"""Scorer ``kv_cache``: 1 - the KV-cache usage the engine last reported."""

from __future__ import annotations

from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class KvCache:
    """Favours engines with free KV cache (room to run the request without preempting)."""

    def score(self, cycle: Cycle) -> Scores:
        return Scores([max(0.0, 1.0 - c.kv_usage) for c in cycle.candidates], "kv")


def build(config: PluginConfig) -> KvCache:
    """The registry's factory for ``kv_cache``."""
    parse_params(config, Params)
    return KvCache()
