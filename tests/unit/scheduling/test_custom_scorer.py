"""A new scorer is one small class and one registry entry: no scheduler change."""

from __future__ import annotations

from pathlib import Path

from gateway.config.settings import load_settings
from gateway.scheduling import Cycle, PluginConfig, Scores, default_registry
from tests.unit.scheduling.fakes import Engine, Harness


class Cheapest:
    """Favours the engines that cost least to run, from a price list in its params."""

    def __init__(self, prices: dict[str, float]) -> None:
        self.prices = prices

    def score(self, cycle: Cycle) -> Scores:
        prices = [self.prices.get(c.name, 0.0) for c in cycle.candidates]
        top = max(prices) or 1.0
        return Scores([1.0 - price / top for price in prices], "cheapest")


def test_a_scorer_registered_by_name_routes_requests_from_a_yaml_profile(
        tmp_path: Path) -> None:
    registry = default_registry()
    registry.register("cheapest", lambda config: Cheapest(**config.params))
    config = tmp_path / "sluice.yaml"
    config.write_text("""
routing:
  profiles:
    thrifty:
      scorers:
        - {type: cheapest, weight: 3, params: {prices: {a: 4.0, b: 1.0, c: 2.0}}}
        - {type: least_loaded, weight: 1}
  models:
    m: {profile: thrifty}
""")
    h = Harness(load_settings(config).routing, registry)
    engines = [Engine("a"), Engine("b", load=3), Engine("c", load=1)]
    decision = h.pick(engines)
    # cheapest: a 0, b 0.75, c 0.5 (x3); least loaded: a 1, b 0, c 0.67: b wins 2.25 to 2.17
    assert (decision.engine.name, decision.strategy, decision.reason) == (
        "b", "thrifty", "cheapest")
    engines[1].load = 6  # least loaded now: a 1, b 0, c 0.83, so c wins 2.33 to 2.25
    assert h.pick(engines).engine.name == "c"


def test_the_factory_gets_the_params_and_the_producers() -> None:
    seen: list[PluginConfig] = []
    registry = default_registry()

    def build(config: PluginConfig) -> Cheapest:
        seen.append(config)
        return Cheapest({})

    registry.register("cheapest", build)
    h = Harness(registry=registry, default={"profile": "p"},
                profiles={"p": {"scorers": [{"type": "cheapest", "params": {"k": 1}}]}})
    assert [(c.type, dict(c.params)) for c in seen] == [("cheapest", {"k": 1})]
    assert seen[0].producers is h.scheduler.producers
