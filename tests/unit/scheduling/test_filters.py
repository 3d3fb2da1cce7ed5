"""Each standard filter alone, on fake engines."""

from __future__ import annotations

import pytest

from gateway.errors import ModelNotFound, NoHealthyEngine
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


def test_not_tried_leaves_out_the_engines_already_tried() -> None:
    engines = [Engine("a"), Engine("b"), Engine("c")]
    assert [e.name for e in NotTried().filter(request(tried={"a", "c"}), engines)] == ["b"]
    assert NotTried().filter(request(), engines) == engines
