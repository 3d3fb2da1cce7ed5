"""Scorer ``round_robin`` alone."""

from __future__ import annotations

from gateway.scheduling.scorers.round_robin import RoundRobin
from tests.unit.scheduling.fakes import Engine, cycle


def test_the_turn_picks_the_favoured_engine() -> None:
    engines = [Engine("a", load=5), Engine("b"), Engine("c")]
    assert [list(RoundRobin().score(cycle(engines, turn=t)).values) for t in (0, 1, 4)] == [
        [1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert RoundRobin().score(cycle(engines)).reason == "rotation"
