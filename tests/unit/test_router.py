"""The router's scorers and their combination, on plain candidate objects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.fleet_settings import RoutingPolicy, RoutingSettings
from gateway.routing.router import Router


@dataclass
class Engine:
    name: str
    load: int = 0
    kv_usage: float = 0.0


def router(strategy: str = "least_loaded", **policy: Any) -> Router:
    return Router(RoutingSettings(default=RoutingPolicy(strategy=strategy, **policy),
                                  prefix={"block_chars": 8}))


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def test_round_robin_rotates_through_every_engine() -> None:
    r = router("round_robin")
    engines = [Engine("a", load=5), Engine("b"), Engine("c")]
    picks = [r.pick(r.request("m", chat("x"), None), engines) for _ in range(6)]
    assert [engines[p.index].name for p in picks] == ["a", "b", "c", "a", "b", "c"]
    assert {(p.strategy, p.reason) for p in picks} == {("round_robin", "rotation")}


def test_least_loaded_picks_the_lowest_load() -> None:
    r = router("least_loaded")
    engines = [Engine("a", load=4), Engine("b", load=1), Engine("c", load=2)]
    assert r.pick(r.request("m", chat("x"), None), engines).index == 1


def test_least_loaded_ties_rotate() -> None:
    r = router("least_loaded", scorers={"least_loaded": 1.0})
    engines = [Engine("a"), Engine("b")]
    picks = [r.pick(r.request("m", chat("x"), None), engines).index for _ in range(4)]
    assert picks == [0, 1, 0, 1]


def test_kv_cache_scorer_prefers_free_cache() -> None:
    r = router(scorers={"kv_cache": 1.0})
    engines = [Engine("a", kv_usage=0.9), Engine("b", kv_usage=0.2), Engine("c", kv_usage=0.5)]
    assert r.pick(r.request("m", chat("x"), None), engines).index == 1


def test_session_affinity_is_sticky_per_key_and_spreads_keys() -> None:
    r = router("session")
    engines = [Engine(name) for name in "abcd"]
    for key in ("alice", "bob", "carol"):
        picks = {r.pick(r.request("m", chat("x"), key), engines).index for _ in range(5)}
        assert len(picks) == 1
    owners = Counter(r.pick(r.request("m", chat("x"), f"user-{i}"), engines).index
                     for i in range(400))
    assert set(owners) == {0, 1, 2, 3}
    assert min(owners.values()) > 50


def test_session_affinity_spills_when_the_owner_is_over_its_bound() -> None:
    r = router("session", load_factor=1.25)
    idle = [Engine(name) for name in "abcd"]
    owner = r.pick(r.request("m", chat("x"), "alice"), idle).index
    busy = [Engine(e.name, load=20 if i == owner else 0) for i, e in enumerate(idle)]
    decision = r.pick(r.request("m", chat("x"), "alice"), busy)
    assert decision.index != owner
    assert decision.reason == "session_spill"


def test_session_without_key_falls_back_to_load() -> None:
    r = router("session")
    engines = [Engine("a", load=3), Engine("b", load=0)]
    decision = r.pick(r.request("m", chat("x"), None), engines)
    assert (decision.index, decision.reason) == (1, "session_no_key")


def test_prefix_affinity_follows_the_conversation() -> None:
    r = router("prefix")
    engines = [Engine(name) for name in "abcd"]
    history = "system prompt shared by all. " + "turn one of alice. " * 4
    first = r.pick(r.request("m", chat(history), None), engines)
    assert first.reason == "prefix_miss"
    # The next turn repeats the history: its engine holds the longest match, even
    # though it is now the busiest.
    engines[first.index].load = 2
    follow = r.pick(r.request("m", chat(history + " and turn two"), None), engines)
    assert follow.index == first.index
    assert follow.reason == "prefix_hit"


def test_prefix_guard_stops_a_hot_prefix_piling_onto_one_engine() -> None:
    r = router("prefix", load_factor=1.25)
    engines = [Engine(name) for name in "abcd"]
    hot = "the same long prompt every client sends " * 3
    owner = r.pick(r.request("m", chat(hot), None), engines).index
    engines[owner].load = 10  # cap = max(ceil(1.25 * 11 / 4), floor 8) = 8
    decision = r.pick(r.request("m", chat(hot), None), engines)
    assert decision.index != owner
    assert decision.reason == "prefix_guarded"


def test_prefix_guard_allows_the_floor_at_low_load() -> None:
    r = router("prefix", load_factor=1.0, affinity_floor=3)
    engines = [Engine(name) for name in "ab"]
    text = "a prompt long enough for several blocks"
    owner = r.pick(r.request("m", chat(text), None), engines).index
    engines[owner].load = 2  # bounded load alone: cap ceil(1.0 * 3 / 2) = 2, so 2 + 1 > cap
    assert r.pick(r.request("m", chat(text), None), engines).index == owner
    engines[owner].load = 3
    assert r.pick(r.request("m", chat(text), None), engines).index != owner


def test_prefix_short_prompt_has_no_blocks() -> None:
    r = router("prefix")
    decision = r.pick(r.request("m", chat("h"), None), [Engine("a"), Engine("b", load=1)])
    assert (decision.index, decision.reason) == (0, "prefix_short")


def test_forgotten_engine_loses_its_prefixes() -> None:
    r = router("prefix")
    engines = [Engine("a"), Engine("b")]
    text = "a prompt long enough for several blocks"
    owner = r.pick(r.request("m", chat(text), None), engines)
    r.forget(engines[owner.index].name)
    assert r.pick(r.request("m", chat(text), None), engines).reason == "prefix_miss"


def test_models_have_their_own_policies() -> None:
    settings = RoutingSettings(models={"special": RoutingPolicy(strategy="round_robin")})
    r = Router(settings)
    engines = [Engine("a", load=9), Engine("b")]
    assert r.pick(r.request("special", chat("x"), None), engines).strategy == "round_robin"
    assert r.pick(r.request("other", chat("x"), None), engines).strategy == "least_loaded"


def test_single_candidate_and_no_candidate() -> None:
    r = router("prefix")
    assert r.pick(r.request("m", chat("x"), None), [Engine("a")]).reason == "single_candidate"
    with pytest.raises(ValueError, match="no candidates"):
        r.pick(r.request("m", chat("x"), None), [])


def test_explicit_weights_replace_the_preset() -> None:
    policy = RoutingPolicy(strategy="prefix", scorers={"least_loaded": 1.0, "prefix": 0.0})
    assert policy.weights() == {"least_loaded": 1.0}
