"""Each standard filter alone, on fake engines."""

from __future__ import annotations

import pytest

from gateway.core.errors import ModelNotFound, NoHealthyEngine
from gateway.scheduling.filters.circuit import Circuit
from gateway.scheduling.filters.healthy import Healthy
from gateway.scheduling.filters.not_tried import NotTried
from gateway.scheduling.filters.serves_model import ServesModel
from tests.unit.scheduling.fakes import Breaker, Engine, request


def test_serves_model_keeps_engines_with_the_card_healthy_or_not() -> None:
    engines = [Engine("a"), Engine("b", cards={"x": {}}), Engine("c", healthy=False)]
    assert [e.name for e in ServesModel().filter(request(), engines)] == ["a", "c"]


def test_serves_model_unknown_model_is_404_unless_nothing_is_up() -> None:
    engines = [Engine("a", cards={"x": {}})]
    with pytest.raises(ModelNotFound, match="The model 'm' does not exist"):
        ServesModel().filter(request(), engines)
    engines[0].healthy = False
    with pytest.raises(NoHealthyEngine, match="no engine is up yet"):
        ServesModel().filter(request(), engines)


def test_healthy_keeps_engines_that_are_up() -> None:
    engines = [Engine("a", healthy=False), Engine("b")]
    assert [e.name for e in Healthy().filter(request(), engines)] == ["b"]


def test_circuit_keeps_engines_whose_breaker_lets_through() -> None:
    engines = [Engine("a", breaker=Breaker(is_open=True)), Engine("b")]
    assert [e.name for e in Circuit().filter(request(), engines)] == ["b"]


def test_breakers_eject_at_most_the_capped_share_of_a_fleet() -> None:
    def fleet(opened: list[float | None]) -> list[Engine]:
        return [Engine(f"e{i}", breaker=Breaker(is_open=at is not None, opened_at=at))
                for i, at in enumerate(opened)]

    names = [e.name for e in Circuit(50).filter(request(), fleet([3.0, None, 1.0, 2.0]))]
    assert names == ["e0", "e1"]  # 2 of 4 may be out: the two opened first stay out
    only = fleet([5.0])
    assert Circuit(50).filter(request(), only) == []  # at least one may always be out
    assert [e.name for e in Circuit(100).filter(request(), fleet([1.0, 2.0, None]))] == [
        "e2"]
    assert [e.name for e in Circuit(0).filter(request(), fleet([1.0, 2.0, None]))] == [
        "e1", "e2"]


def test_not_tried_leaves_out_the_engines_already_tried() -> None:
    engines = [Engine("a"), Engine("b"), Engine("c")]
    assert [e.name for e in NotTried().filter(request(tried={"a", "c"}), engines)] == ["b"]
    assert NotTried().filter(request(), engines) == engines
