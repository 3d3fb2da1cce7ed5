"""The pool's filters: which engines a request for a model may go to."""

from __future__ import annotations

import pytest

from gateway.engine.client import EngineClient
from gateway.engine.memory import MemoryResponse, MemoryTransport
from gateway.errors import ModelNotFound, NoHealthyEngine
from gateway.fleet_settings import BreakerSettings
from gateway.metrics import GatewayMetrics
from gateway.services.engine_pool import EnginePool
from gateway.settings import EngineConfig, TimeoutSettings


async def _nothing(request: object) -> MemoryResponse:
    return MemoryResponse(404)


@pytest.fixture
async def pool() -> EnginePool:
    configs = [EngineConfig(name=f"e{i}", url=f"http://127.0.0.1:{9 + i}") for i in range(4)]
    transport = MemoryTransport(_nothing)
    pool = EnginePool(configs,
                      lambda c: EngineClient(c.name, c.base_url, transport, TimeoutSettings()),
                      GatewayMetrics(), health_interval_s=1,
                      breaker=BreakerSettings(failure_threshold=1))
    serves = [{"m"}, {"m"}, {"m", "lora"}, {"other"}]
    for engine, models in zip(pool.engines, serves, strict=True):
        engine.healthy = True
        engine.cards = {model: {"id": model} for model in models}
    return pool


def names(pool: EnginePool, model: str, exclude: frozenset[str] = frozenset()) -> list[str]:
    return [e.name for e in pool.candidates(model, exclude)]


def test_only_healthy_engines_serving_the_model(pool: EnginePool) -> None:
    assert names(pool, "m") == ["e0", "e1", "e2"]
    assert names(pool, "lora") == ["e2"]
    pool.engines[1].healthy = False
    assert names(pool, "m") == ["e0", "e2"]
    assert pool.healthy_count("m") == 2


def test_open_circuit_and_tried_engines_are_left_out(pool: EnginePool) -> None:
    pool.engines[0].breaker.record_failure()  # threshold 1: open
    assert names(pool, "m") == ["e1", "e2"]
    assert names(pool, "m", frozenset({"e1"})) == ["e2"]
    with pytest.raises(NoHealthyEngine):
        names(pool, "m", frozenset({"e1", "e2"}))


def test_unknown_model_is_404_and_no_engine_up_is_503(pool: EnginePool) -> None:
    with pytest.raises(ModelNotFound):
        names(pool, "nope")
    for engine in pool.engines:
        engine.healthy = False
    with pytest.raises(NoHealthyEngine):
        names(pool, "nope")
