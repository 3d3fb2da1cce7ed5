"""Picker ``max_score``: the highest total; ties to the less loaded, then by rotation."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.scheduling.framework.interfaces import Cycle
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params

_TIE = 1e-9


class MaxScore:
    """Among the candidates within 1e-9 of the best total, the least loaded one; among
    equally loaded ones, the first at or after this pass's turn (so equals take turns)."""

    def pick(self, cycle: Cycle, totals: Sequence[float]) -> int:
        best = max(totals)
        n = len(totals)
        rotation = cycle.turn % n
        loads = cycle.loads
        tied = [i for i, total in enumerate(totals) if total >= best - _TIE]
        return min(tied, key=lambda i: (loads[i], (i - rotation) % n))


def build(config: PluginConfig) -> MaxScore:
    """The registry's factory for ``max_score``."""
    parse_params(config, Params)
    return MaxScore()
