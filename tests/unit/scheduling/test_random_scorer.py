"""Scorer ``random`` alone, and in a profile of its own."""

from __future__ import annotations

import pytest

from gateway.scheduling.framework.plugin_config import PluginConfigError
from gateway.scheduling.scorers.random_scores import RandomScorer
from tests.unit.scheduling.fakes import Engine, Harness, cycle

ENGINES = [Engine("a", load=5), Engine("b"), Engine("c")]


def draws(scorer: RandomScorer, passes: int) -> list[list[float]]:
    return [list(scorer.score(cycle(ENGINES, turn=t)).values) for t in range(passes)]


def test_one_value_in_0_1_per_candidate_whatever_the_load() -> None:
    scores = RandomScorer(seed=1).score(cycle(ENGINES))
    assert scores.reason == "random"
    assert not scores.affinity
    assert len(scores.values) == 3
    assert all(0 <= v < 1 for v in scores.values)


def test_a_seed_repeats_the_draws_and_each_pass_draws_anew() -> None:
    first = draws(RandomScorer(seed=7), 50)
    assert first == draws(RandomScorer(seed=7), 50)
    assert first != draws(RandomScorer(seed=8), 50)
    assert len({tuple(values) for values in first}) == 50


def test_every_engine_comes_first_about_as_often() -> None:
    scorer = RandomScorer(seed=3)
    wins = [0, 0, 0]
    for values in draws(scorer, 3000):
        wins[values.index(max(values))] += 1
    assert all(900 < w < 1100 for w in wins), wins


def test_a_profile_of_it_alone_places_seeded_and_ignores_load() -> None:
    def placements() -> list[str]:
        h = Harness(default={"profile": "random"}, profiles={"random": {"scorers": [
            {"type": "random", "params": {"seed": 5}}]}})
        return [h.pick(ENGINES).engine.name for _ in range(60)]

    first = placements()
    assert first == placements()
    assert set(first) == {"a", "b", "c"}  # the loaded engine too


def test_an_unknown_param_stops_the_build() -> None:
    with pytest.raises(PluginConfigError, match="random"):
        Harness(default={"profile": "p"},
                profiles={"p": {"scorers": [{"type": "random", "params": {"sed": 5}}]}})
