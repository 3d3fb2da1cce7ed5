"""Scorer ``random``: a fresh uniform value in [0, 1) per candidate and pass.

Alone (weight > 0, no other scorer) it places requests at random: the baseline a
placement policy is measured against. ``seed`` (param) makes the draws repeatable.
"""

from __future__ import annotations

from random import Random

from gateway.scheduling.framework.interfaces import Cycle, Scores
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, parse_params


class RandomParams(Params):
    seed: int | None = None
    """None: seeded from the operating system."""


class RandomScorer:
    """Uniform random scores from its own generator."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = Random(seed)

    def score(self, cycle: Cycle) -> Scores:
        return Scores([self._rng.random() for _ in cycle.candidates], "random")


def build(config: PluginConfig) -> RandomScorer:
    """The registry's factory for ``random``."""
    return RandomScorer(parse_params(config, RandomParams).seed)
