"""Picker ``max_score`` alone."""

from __future__ import annotations

from gateway.scheduling.pickers.max_score import MaxScore
from tests.unit.scheduling.fakes import Engine, cycle


def test_the_highest_total_wins_whatever_the_load() -> None:
    engines = [Engine("a"), Engine("b", load=9)]
    assert MaxScore().pick(cycle(engines), [0.5, 0.75]) == 1


def test_ties_go_to_the_less_loaded_then_by_rotation() -> None:
    engines = [Engine("a", load=1), Engine("b"), Engine("c"), Engine("d")]
    totals = [1.0, 1.0, 1.0 - 1e-12, 0.5]  # within 1e-9 counts as a tie
    assert MaxScore().pick(cycle(engines), totals) == 1
    assert MaxScore().pick(cycle(engines, turn=2), totals) == 2
    assert MaxScore().pick(cycle(engines, turn=3), totals) == 1  # from 3, 1 comes before 2
