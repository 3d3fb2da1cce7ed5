"""The scheduler with today's strategies: every case of the old router's tests, through
``Scheduler.schedule`` (and ``attempt_opened``, as when the request's attempt opened)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.config.fleet import RoutingPolicy, RoutingSettings
from gateway.core.errors import NoHealthyEngine
from gateway.scheduling.profiles import legacy_profile
from tests.unit.scheduling.fakes import Engine, Harness, request


def harness(strategy: str = "least_loaded", **policy: Any) -> Harness:
    return Harness(RoutingSettings(default=RoutingPolicy(strategy=strategy, **policy),
                                   prefix={"block_chars": 8}))


def test_round_robin_rotates_through_every_engine() -> None:
    h = harness("round_robin")
    engines = [Engine("a", load=5), Engine("b"), Engine("c")]
    picks = [h.pick(engines) for _ in range(6)]
    assert [p.engine.name for p in picks] == ["a", "b", "c", "a", "b", "c"]
    assert {(p.strategy, p.reason) for p in picks} == {("round_robin", "rotation")}


def test_least_loaded_picks_the_lowest_load() -> None:
    h = harness("least_loaded")
    engines = [Engine("a", load=4), Engine("b", load=1), Engine("c", load=2)]
    assert h.pick(engines).index == 1


def test_least_loaded_ties_rotate() -> None:
    h = harness("least_loaded", scorers={"least_loaded": 1.0})
    engines = [Engine("a"), Engine("b")]
    assert [h.pick(engines).index for _ in range(4)] == [0, 1, 0, 1]


def test_kv_cache_scorer_prefers_free_cache() -> None:
    h = harness(scorers={"kv_cache": 1.0})
    engines = [Engine("a", kv_usage=0.9), Engine("b", kv_usage=0.2), Engine("c", kv_usage=0.5)]
    assert h.pick(engines).index == 1


def test_session_affinity_is_sticky_per_key_and_spreads_keys() -> None:
    h = harness("session")
    engines = [Engine(name) for name in "abcd"]
    for key in ("alice", "bob", "carol"):
        assert len({h.pick(engines, session_key=key).index for _ in range(5)}) == 1
    owners = Counter(h.pick(engines, session_key=f"user-{i}").index for i in range(400))
    assert set(owners) == {0, 1, 2, 3}
    assert min(owners.values()) > 50


def test_session_affinity_spills_when_the_owner_is_over_its_bound() -> None:
    h = harness("session", load_factor=1.25)
    idle = [Engine(name) for name in "abcd"]
    owner = h.pick(idle, session_key="alice").index
    busy = [Engine(e.name, load=20 if i == owner else 0) for i, e in enumerate(idle)]
    decision = h.pick(busy, session_key="alice")
    assert decision.index != owner
    assert decision.reason == "session_spill"


def test_session_without_key_falls_back_to_load() -> None:
    h = harness("session")
    decision = h.pick([Engine("a", load=3), Engine("b", load=0)])
    assert (decision.index, decision.reason) == (1, "session_no_key")


def test_prefix_affinity_follows_the_conversation() -> None:
    h = harness("prefix")
    engines = [Engine(name) for name in "abcd"]
    history = "system prompt shared by all. " + "turn one of alice. " * 4
    first = h.pick(engines, history)
    assert first.reason == "prefix_miss"
    # The next turn repeats the history: its engine holds the longest match, even
    # though it is now the busiest.
    engines[first.index].load = 2
    follow = h.pick(engines, history + " and turn two")
    assert follow.index == first.index
    assert follow.reason == "prefix_hit"


def test_prefix_guard_stops_a_hot_prefix_piling_onto_one_engine() -> None:
    h = harness("prefix", load_factor=1.25)
    engines = [Engine(name) for name in "abcd"]
    hot = "the same long prompt every client sends " * 3
    owner = h.pick(engines, hot).index
    engines[owner].load = 10  # cap = max(ceil(1.25 * 11 / 4), floor 8) = 8
    decision = h.pick(engines, hot)
    assert decision.index != owner
    assert decision.reason == "prefix_guarded"


def test_prefix_guard_allows_the_floor_at_low_load() -> None:
    h = harness("prefix", load_factor=1.0, affinity_floor=3)
    engines = [Engine(name) for name in "ab"]
    text = "a prompt long enough for several blocks"
    owner = h.pick(engines, text).index
    engines[owner].load = 2  # bounded load alone: cap ceil(1.0 * 3 / 2) = 2, so 2 + 1 > cap
    assert h.pick(engines, text).index == owner
    engines[owner].load = 3
    assert h.pick(engines, text).index != owner


def test_prefix_short_prompt_has_no_blocks() -> None:
    h = harness("prefix")
    decision = h.pick([Engine("a"), Engine("b", load=1)], "h")
    assert (decision.index, decision.reason) == (0, "prefix_short")


def test_restarted_engine_loses_its_prefixes() -> None:
    h = harness("prefix")
    engines = [Engine("a"), Engine("b")]
    text = "a prompt long enough for several blocks"
    owner = h.pick(engines, text)
    h.scheduler.engine_restarted(owner.engine.name)
    assert h.pick(engines, text).reason == "prefix_miss"


def test_models_have_their_own_policies() -> None:
    h = Harness(RoutingSettings(models={"special": RoutingPolicy(strategy="round_robin")}))
    engines = [Engine("a", load=9, cards={"special": {}, "other": {}}),
               Engine("b", cards={"special": {}, "other": {}})]
    assert h.pick(engines, model="special").strategy == "round_robin"
    assert h.pick(engines, model="other").strategy == "least_loaded"


def test_single_candidate_and_no_candidate() -> None:
    h = harness("prefix")
    assert h.pick([Engine("a")]).reason == "single_candidate"
    with pytest.raises(NoHealthyEngine):
        h.pick([])


def test_explicit_weights_replace_the_preset() -> None:
    policy = RoutingPolicy(strategy="prefix", scorers={"least_loaded": 1.0, "prefix": 0.0})
    assert policy.weights() == {"least_loaded": 1.0}
    assert [(s.type, s.weight) for s in legacy_profile(policy).scorers] == [("least_loaded", 1.0)]
    h = Harness(RoutingSettings(default=policy))
    decision = h.pick([Engine("a", load=2), Engine("b")], "a long enough prompt " * 8)
    assert (decision.index, decision.strategy, decision.reason) == (1, "prefix", "least_loaded")


def test_the_decision_is_counted_with_the_request_labels() -> None:
    h = harness("least_loaded")
    h.pick([Engine("a", load=1), Engine("b")])
    h.pick([Engine("a"), Engine("b")])
    alias = request()  # a request to an alias "chat" resolved to v2, served as "m"
    alias.label, alias.version = "chat", "v2"
    h.pick_ctx(alias, [Engine("a"), Engine("b")])
    sample = h.metrics.registry.get_sample_value
    for model, version, reason in (("m", "none", "least_loaded"), ("m", "none", "even"),
                                   ("chat", "v2", "even")):
        labels = {"model": model, "version": version, "strategy": "least_loaded",
                  "reason": reason}
        assert sample("sluice_routing_decisions_total", labels) == 1


def test_the_chosen_breaker_is_told() -> None:
    h = harness("least_loaded")
    engines = [Engine("a", load=1), Engine("b")]
    h.pick(engines)
    assert [e.breaker.picks for e in engines] == [0, 1]
