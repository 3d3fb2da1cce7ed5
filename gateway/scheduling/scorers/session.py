"""Scorer ``session``: session affinity by consistent hashing with bounded loads.

The session key (``x-session-id`` header, else the body's ``user``) is placed on a hash
ring of the candidates; its engine scores 1 unless it holds more than ``load_factor`` x
the mean load (+1), in which case the next engine clockwise with room does (a spill).
"""

from __future__ import annotations

from pydantic import Field

from gateway.config.fleet import DEFAULT_LOAD_FACTOR
from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params
from gateway.scheduling.scorers.hashring import BoundedLoadRing


class SessionParams(Params):
    load_factor: float = Field(default=DEFAULT_LOAD_FACTOR, ge=1.0)


class Session:
    """1 for the session's engine; reasons ``session_sticky``, ``session_spill`` and
    ``session_no_key`` (all 0: the other scorers decide)."""

    def __init__(self, load_factor: float = DEFAULT_LOAD_FACTOR) -> None:
        self.load_factor = load_factor
        self._ring = BoundedLoadRing()

    def score(self, cycle: Cycle) -> Scores:
        key = cycle.ctx.session_key
        names = [c.name for c in cycle.candidates]
        if not key:
            return Scores([0.0] * len(names), "session_no_key", affinity=True)
        owner = self._ring.pick(key, dict.fromkeys(names, 0), 1.0)
        chosen = self._ring.pick(key, dict(zip(names, cycle.loads, strict=True)),
                                 self.load_factor)
        return Scores([1.0 if name == chosen else 0.0 for name in names],
                      "session_sticky" if chosen == owner else "session_spill", affinity=True)


def build(config: PluginConfig) -> Session:
    """The registry's factory for ``session``."""
    return Session(parse_params(config, SessionParams).load_factor)
