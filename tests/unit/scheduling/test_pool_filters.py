"""The standard filters on the pool's real engines: the old pool-filter cases, through
``Scheduler.schedule``. A spy scorer sees what the filters left."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.config.fleet import BreakerSettings, RoutingSettings
from gateway.config.settings import EngineConfig, TimeoutSettings
from gateway.core.errors import ModelNotFound, NoHealthyEngine
from gateway.observability.metrics import GatewayMetrics
from gateway.scheduling import Cycle, PluginConfig, Scheduler, Scores, default_registry
from gateway.upstream.client import EngineClient
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport
from gateway.upstream.pool import EnginePool
from tests.unit.scheduling.fakes import request


class Spy:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, cycle: Cycle) -> Scores:
        self.seen = [c.name for c in cycle.candidates]
        return Scores([0.0] * len(cycle.candidates), "spy")


async def _unused(request: MemoryRequest) -> MemoryResponse:
    return MemoryResponse(404)


@pytest.fixture
async def pool() -> EnginePool:
    configs = [EngineConfig(name=f"e{i}", url=f"http://127.0.0.1:{9 + i}") for i in range(4)]
    transport = MemoryTransport(_unused)
    pool = EnginePool(configs,
                      lambda c: EngineClient(c.name, c.base_url, transport, TimeoutSettings()),
                      GatewayMetrics(), health_interval_s=1,
                      breaker=BreakerSettings(failure_threshold=1))
    serves = [{"m"}, {"m"}, {"m", "lora"}, {"other"}]
    for engine, models in zip(pool.engines, serves, strict=True):
        engine.healthy = True
        engine.cards = {model: {"id": model} for model in models}
    return pool


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def scheduler(spy: Spy) -> Scheduler:
    registry = default_registry()

    def build(config: PluginConfig) -> Spy:
        return spy

    registry.register("spy", build)
    settings = RoutingSettings.model_validate(
        {"profiles": {"spying": {"scorers": {"spy": 1}}}, "default": {"profile": "spying"}})
    return Scheduler(settings, GatewayMetrics(), registry)


def names(scheduler: Scheduler, spy: Spy, pool: EnginePool, model: str,
          exclude: Sequence[str] = ()) -> list[str]:
    spy.seen = []
    engine = scheduler.schedule(request(model=model, tried=set(exclude)), pool.engines)
    return spy.seen or [engine.name]


def test_only_healthy_engines_serving_the_model(pool: EnginePool, scheduler: Scheduler,
                                                spy: Spy) -> None:
    assert names(scheduler, spy, pool, "m") == ["e0", "e1", "e2"]
    assert names(scheduler, spy, pool, "lora") == ["e2"]
    pool.engines[1].healthy = False
    assert names(scheduler, spy, pool, "m") == ["e0", "e2"]
    assert pool.healthy_count("m") == 2


def test_open_circuit_and_tried_engines_are_left_out(pool: EnginePool, scheduler: Scheduler,
                                                     spy: Spy) -> None:
    pool.engines[0].breaker.record_failure()  # threshold 1: open
    assert names(scheduler, spy, pool, "m") == ["e1", "e2"]
    assert names(scheduler, spy, pool, "m", {"e1"}) == ["e2"]
    with pytest.raises(NoHealthyEngine, match="no healthy engine serves 'm'"):
        names(scheduler, spy, pool, "m", {"e1", "e2"})


def test_unknown_model_is_404_and_no_engine_up_is_503(pool: EnginePool, scheduler: Scheduler,
                                                      spy: Spy) -> None:
    with pytest.raises(ModelNotFound, match="The model 'nope' does not exist") as missing:
        names(scheduler, spy, pool, "nope")
    assert missing.value.param == "model"
    for engine in pool.engines:
        engine.healthy = False
    with pytest.raises(NoHealthyEngine, match="no engine is up yet"):
        names(scheduler, spy, pool, "nope")
