"""Routing profiles from YAML, today's strategies as presets, and configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config.fleet import PRESETS, RoutingPolicy, RoutingSettings
from gateway.config.settings import load_settings
from gateway.observability.metrics import GatewayMetrics
from gateway.scheduling import PluginConfigError, Scheduler
from gateway.scheduling.profiles import legacy_profile
from tests.unit.scheduling.fakes import Engine, Harness

PROFILES = """
routing:
  profiles:
    cache_first:
      scorers: {prefix: 2.0, least_loaded: 1.0}
    spread:
      filters: [serves_model, healthy]
      scorers:
        - {type: least_loaded, weight: 1}
        - {type: prefix, weight: 0}
      picker: {type: max_score}
    tight:
      scorers:
        - type: prefix
          weight: 2
          params: {load_factor: 1.0, affinity_floor: 1}
  default: {strategy: session}
  models:
    smollm2: {profile: cache_first}
    other: {profile: tight}
    legacy: {strategy: prefix, affinity_floor: 3}
  plugin_timing: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    return path


def test_profiles_load_from_yaml(tmp_path: Path) -> None:
    routing = load_settings(write(tmp_path, PROFILES)).routing
    assert routing.plugin_timing
    cache_first = routing.profiles["cache_first"]
    assert cache_first.filters is None
    assert [(s.type, s.weight) for s in cache_first.scorers] == [("prefix", 2.0),
                                                                 ("least_loaded", 1.0)]
    assert cache_first.picker.type == "max_score"
    spread = routing.profiles["spread"]
    assert [f.type for f in spread.filters or []] == ["serves_model", "healthy"]
    assert routing.profiles["tight"].scorers[0].params == {"load_factor": 1.0,
                                                          "affinity_floor": 1}
    assert routing.policy("smollm2").profile == "cache_first"
    assert routing.policy("legacy").affinity_floor == 3


def test_each_model_runs_its_profile(tmp_path: Path) -> None:
    h = Harness(load_settings(write(tmp_path, PROFILES)).routing)
    engines = [Engine("a", cards={m: {} for m in ("smollm2", "other", "legacy", "x")}),
               Engine("b", load=1, cards={m: {} for m in ("smollm2", "other", "legacy", "x")})]
    assert h.pick(engines, model="smollm2").strategy == "cache_first"
    assert h.pick(engines, model="legacy").strategy == "prefix"
    assert h.pick(engines, model="x").strategy == "session"
    spread = Harness(RoutingSettings.model_validate(
        {"profiles": {"spread": {"filters": ["serves_model", "healthy"],
                                 "scorers": {"least_loaded": 1}}},
         "default": {"profile": "spread"}}))
    engines[0].breaker.is_open = True  # no circuit filter in this profile
    assert spread.pick(engines, model="x").engine.name == "a"


def test_plugin_params_reach_the_plugin(tmp_path: Path) -> None:
    """``tight`` lets prefix affinity hold one request at most, whatever the mean."""
    h = Harness(load_settings(write(tmp_path, PROFILES)).routing)
    engines = [Engine(n, cards={"other": {}}) for n in "ab"]
    text = "a prompt long enough for several blocks " * 3
    owner = h.pick(engines, text, model="other").engine
    owner.load = 1  # cap = max(ceil(1.0 * 2 / 2), 1) = 1: one more would exceed it
    follow = h.pick(engines, text, model="other")
    assert follow.engine is not owner
    assert follow.reason == "prefix_guarded"


@pytest.mark.parametrize("strategy", sorted(PRESETS))
def test_strategies_are_presets_with_the_same_weights(strategy: str) -> None:
    policy = RoutingPolicy.model_validate({"strategy": strategy})
    profile = legacy_profile(policy)
    assert {s.type: s.weight for s in profile.scorers} == PRESETS[strategy]
    assert profile.filters is None
    assert profile.picker.type == "max_score"


def test_legacy_bounds_become_the_affinity_scorers_params() -> None:
    policy = RoutingPolicy(strategy="prefix", load_factor=1.5, affinity_floor=3,
                           scorers={"session": 1, "prefix": 1, "least_loaded": 1})
    scorers = legacy_profile(policy).scorers
    assert [s.type for s in scorers] == ["prefix", "session", "least_loaded"]
    assert [s.params for s in scorers] == [{"load_factor": 1.5, "affinity_floor": 3},
                                           {"load_factor": 1.5}, {}]


def test_an_unknown_plugin_fails_with_the_known_ones(tmp_path: Path) -> None:
    routing = load_settings(write(tmp_path, """
routing:
  profiles:
    mine: {scorers: {prefix: 1, prefix_cache_hits: 1}}
""")).routing
    with pytest.raises(PluginConfigError) as error:
        Scheduler(routing, GatewayMetrics())
    message = str(error.value)
    assert "routing profile 'mine': unknown plugin type 'prefix_cache_hits'" in message
    assert ("known types: circuit, healthy, kv_cache, least_loaded, lora_affinity, max_score, "
            "not_tried, prefix, random, round_robin, serves_model, session") in message


def test_an_unused_profile_is_checked_too() -> None:
    routing = RoutingSettings.model_validate({"profiles": {"spare": {"picker": "best"}}})
    with pytest.raises(PluginConfigError, match="unknown plugin type 'best'"):
        Scheduler(routing, GatewayMetrics())


@pytest.mark.parametrize(("profile", "error"), [
    ({"filters": ["least_loaded"]}, "plugin 'least_loaded' is not a filter"),
    ({"scorers": {"healthy": 1}}, "plugin 'healthy' is not a scorer"),
    ({"picker": "prefix"}, "plugin 'prefix' is not a picker"),
    ({"scorers": {"prefx": 0}}, "unknown plugin type 'prefx'"),
    ({"scorers": [{"type": "prefix", "params": {"floor": 2}}]}, "plugin 'prefix': invalid"),
    ({"scorers": [{"type": "session", "params": {"load_factor": 0.5}}]}, "invalid params"),
    ({"filters": [{"type": "healthy", "params": {"x": 1}}]}, "plugin 'healthy': invalid"),
])
def test_misconfigured_plugins_fail_when_built(profile: dict[str, object], error: str) -> None:
    routing = RoutingSettings.model_validate({"profiles": {"bad": profile}})
    with pytest.raises(PluginConfigError, match=error):
        Scheduler(routing, GatewayMetrics())


@pytest.mark.parametrize(("routing", "error"), [
    ({"default": {"profile": "nope"}}, "routing.default: unknown profile 'nope'"),
    ({"models": {"m": {"profile": "nope"}}, "profiles": {"p": {}}},
     r"routing.models.m: unknown profile 'nope' \(profiles: p\)"),
    ({"models": {"m": {"profile": "p", "strategy": "prefix"}}, "profiles": {"p": {}}},
     "profile 'p' replaces strategy"),
    ({"profiles": {"p": {"scorers": {"prefix": -1}}}}, "greater than or equal to 0"),
])
def test_settings_reject_bad_profile_references(routing: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        RoutingSettings.model_validate(routing)


def test_plugin_timing_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ROUTING__PLUGIN_TIMING", "true")
    assert load_settings().routing.plugin_timing
