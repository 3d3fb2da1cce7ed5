"""Scorer ``session`` alone."""

from __future__ import annotations

from gateway.scheduling.scorers.session import Session
from tests.unit.scheduling.fakes import Engine, cycle, request


def test_the_key_owner_scores_one_and_stays_put() -> None:
    scorer = Session()
    engines = [Engine(name) for name in "abcd"]
    first = scorer.score(cycle(engines, request(session_key="alice")))
    assert sorted(first.values) == [0, 0, 0, 1]
    assert (first.reason, first.affinity) == ("session_sticky", True)
    again = Session().score(cycle(engines, request(session_key="alice")))
    assert list(again.values) == list(first.values)  # the same in every process


def test_an_owner_over_its_bound_spills_to_the_next() -> None:
    scorer = Session(load_factor=1.25)
    engines = [Engine(name) for name in "abcd"]
    owner = list(scorer.score(cycle(engines, request(session_key="k"))).values).index(1.0)
    engines[owner].load = 20
    spilled = scorer.score(cycle(engines, request(session_key="k")))
    assert spilled.reason == "session_spill"
    assert spilled.values[owner] == 0.0
    assert sum(spilled.values) == 1.0


def test_no_key_scores_zero() -> None:
    scores = Session().score(cycle([Engine("a"), Engine("b")]))
    assert (list(scores.values), scores.reason) == ([0.0, 0.0], "session_no_key")
