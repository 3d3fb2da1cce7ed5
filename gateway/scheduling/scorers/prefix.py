"""Scorer ``prefix``: the share of the prompt's leading blocks an engine already holds.

It reads the prefix-cache index (a data producer, fed when attempts open) and never
writes it. Load-imbalance guard: an engine holding more than
``max(ceil(load_factor x (total load + 1) / candidates), affinity_floor)`` requests
scores 0, so one hot prefix cannot pile onto one replica.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from gateway.config.fleet import DEFAULT_AFFINITY_FLOOR, DEFAULT_LOAD_FACTOR
from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params
from gateway.scheduling.producers import PrefixCacheIndexer


class PrefixParams(Params):
    load_factor: float = Field(default=DEFAULT_LOAD_FACTOR, ge=1.0)
    affinity_floor: int = Field(default=DEFAULT_AFFINITY_FLOOR, ge=1)


class Prefix:
    """matched blocks / prompt blocks per engine; reasons ``prefix_hit``, ``prefix_miss``,
    ``prefix_guarded`` (the best match was over the cap) and ``prefix_short`` (no full
    block)."""

    def __init__(self, index: PrefixCacheIndexer, load_factor: float = DEFAULT_LOAD_FACTOR,
                 affinity_floor: int = DEFAULT_AFFINITY_FLOOR) -> None:
        self._index = index
        self.load_factor = load_factor
        self.affinity_floor = affinity_floor

    @property
    def consumes(self) -> Sequence[object]:
        return (self._index,)

    def score(self, cycle: Cycle) -> Scores:
        n = len(cycle.candidates)
        hashes = self._index.hashes(cycle.ctx)
        if not hashes:
            return Scores([0.0] * n, "prefix_short", affinity=True)
        names = [c.name for c in cycle.candidates]
        matched = self._index.match(cycle.ctx, names)
        raw = [matched.get(name, 0) for name in names]
        if max(raw) == 0:
            return Scores([0.0] * n, "prefix_miss", affinity=True)
        loads = cycle.loads
        cap = max(math.ceil(self.load_factor * (sum(loads) + 1) / n), self.affinity_floor)
        allowed = [m if load + 1 <= cap else 0 for m, load in zip(raw, loads, strict=True)]
        reason = "prefix_hit" if max(allowed) == max(raw) else "prefix_guarded"
        return Scores([m / len(hashes) for m in allowed], reason, affinity=True)


def build(config: PluginConfig) -> Prefix:
    """The registry's factory for ``prefix``."""
    params = parse_params(config, PrefixParams)
    return Prefix(config.producers.prefix_cache, params.load_factor, params.affinity_floor)
