"""Scorer ``least_loaded`` alone."""

from __future__ import annotations

from gateway.scheduling.scorers.least_loaded import LeastLoaded
from tests.unit.scheduling.fakes import Engine, cycle


def test_scores_scale_between_the_least_and_the_most_loaded() -> None:
    scores = LeastLoaded().score(cycle([Engine("a", load=4), Engine("b", load=0),
                                        Engine("c", load=1)]))
    assert (list(scores.values), scores.reason) == ([0.0, 1.0, 0.75], "least_loaded")


def test_even_loads_score_all_one() -> None:
    scores = LeastLoaded().score(cycle([Engine("a", load=2), Engine("b", load=2)]))
    assert (list(scores.values), scores.reason) == ([1.0, 1.0], "even")
