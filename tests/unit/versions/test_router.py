"""The version router: weighted and sticky assignment, pins, fallback, reloads."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from pydantic import ValidationError

from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT
from gateway.core.errors import InvalidField
from gateway.stores import VersionPolicy
from gateway.stores.memory import MemoryVersionPolicies
from gateway.versions import AliasSettings, VersionRouter, VersionsSettings, policy_problem

CHAT_ALIAS = {"versions": {"v1": {"model": "base-a"},
                           "v2": {"model": "base-a", "adapter": "lora-b"},
                           "v3": {"model": "base-c"}},
              "weights": {"v1": 90, "v2": 10}, "fallback": ["v2", "v1", "v3"]}


def router(down: frozenset[str] = frozenset(), **alias: object) -> VersionRouter:
    settings = VersionsSettings.model_validate({"aliases": {"chat": {**CHAT_ALIAS, **alias}}})
    return VersionRouter(settings, MemoryVersionPolicies(), lambda model: model not in down)


def ctx(request_id: str, model: str = "chat", *, session: str | None = None,
        principal: str | None = None, pin: str | None = None) -> RequestContext:
    context = RequestContext.new(request_id, CHAT, {"model": model, "messages": []},
                                 session_key=session, principal=principal)
    context.pinned_version = pin
    return context


def resolved(r: VersionRouter, context: RequestContext) -> RequestContext:
    r.resolve(context)
    return context


def test_a_ten_percent_canary_over_5000_requests_is_within_one_and_a_half_points() -> None:
    r = router()
    counts = Counter(resolved(r, ctx(f"req-{i}")).version for i in range(5000))
    share = counts["v2"] / 5000
    assert abs(share - 0.10) <= 0.015, share
    assert set(counts) == {"v1", "v2"}


def test_a_version_is_served_by_its_model_and_adapter() -> None:
    r = router(weights={"v2": 1})
    context = resolved(r, ctx("r"))
    assert (context.version, context.model, context.adapter) == ("v2", "lora-b", "lora-b")
    assert context.body["model"] == "lora-b"
    assert context.requested_model == "chat"


def test_a_model_that_is_no_alias_passes_through() -> None:
    context = resolved(router(), ctx("r", "base-a"))
    assert (context.version, context.model, context.body["model"]) == (None, "base-a", "base-a")


def test_sticky_keys_stay_on_one_version_and_a_growing_canary_keeps_its_callers() -> None:
    r = router(sticky=True)
    first: dict[str, str | None] = {}
    for key in range(500):
        seen = {resolved(r, ctx(f"req-{key}-{n}", session=f"user-{key}")).version
                for n in range(5)}
        assert len(seen) == 1
        first[f"user-{key}"] = seen.pop()
    assert 20 < sum(v == "v2" for v in first.values()) < 80
    r._policies["chat"] = VersionPolicy({"v1": 50, "v2": 50})  # a wider canary
    for key, version in first.items():
        now = resolved(r, ctx("another", session=key)).version
        assert version != "v2" or now == "v2"


def test_the_principal_is_the_sticky_key_without_a_session() -> None:
    r = router(weights={"v1": 50, "v2": 50}, sticky=True)
    versions = {resolved(r, ctx(f"req-{n}", principal="k-1")).version for n in range(50)}
    assert len(versions) == 1


def test_without_stickiness_the_request_id_decides() -> None:
    r = router(weights={"v1": 50, "v2": 50}, sticky=False)
    versions = {resolved(r, ctx(f"req-{n}", session="user-1")).version for n in range(50)}
    assert versions == {"v1", "v2"}


def test_a_pin_header_wins_over_the_split_and_an_unknown_pin_is_a_400() -> None:
    r = router(weights={"v1": 1})
    assert resolved(r, ctx("r", pin="v3")).version == "v3"
    with pytest.raises(InvalidField) as info:
        r.resolve(ctx("r", pin="v9"))
    assert info.value.param == "x-sluice-version"


def test_the_fallback_chain_answers_when_a_version_is_down() -> None:
    r = router(down=frozenset({"lora-b"}), weights={"v2": 1})
    context = resolved(r, ctx("r"))
    assert (context.version, context.fallback_from, context.model) == ("v1", "v2", "base-a")
    both_down = router(down=frozenset({"lora-b", "base-a"}), weights={"v2": 1})
    assert resolved(both_down, ctx("r")).version == "v3"
    none_up = router(down=frozenset({"lora-b", "base-a", "base-c"}), weights={"v2": 1})
    context = resolved(none_up, ctx("r"))
    assert (context.version, context.fallback_from) == ("v2", None)


def test_a_version_outside_the_chain_falls_back_to_its_start() -> None:
    r = router(down=frozenset({"base-c"}), weights={"v3": 1}, fallback=["v1"])
    assert resolved(r, ctx("r")).version == "v1"


async def test_rollback_restores_the_previous_split() -> None:
    r = router()
    await r.seed()
    await r.store.set("chat", VersionPolicy({"v1": 50, "v2": 50}))
    await r.reload("chat")
    assert r.policy("chat").weights == {"v1": 50, "v2": 50}
    await r.store.rollback("chat")
    await r.reload("chat")
    assert r.policy("chat").weights == {"v1": 90, "v2": 10}
    counts = Counter(resolved(r, ctx(f"req-{i}")).version for i in range(5000))
    assert abs(counts["v2"] / 5000 - 0.10) <= 0.015


async def test_a_stored_policy_that_no_longer_fits_is_ignored() -> None:
    r = router()
    await r.store.set("chat", VersionPolicy({"gone": 1}))
    await r.reload()
    assert r.policy("chat").weights == {"v1": 90, "v2": 10}


def test_policies_are_checked() -> None:
    alias = AliasSettings.model_validate(CHAT_ALIAS)
    assert policy_problem(alias, VersionPolicy({"v1": 1})) is None
    assert "unknown version" in str(policy_problem(alias, VersionPolicy({"v9": 1})))
    assert "positive" in str(policy_problem(alias, VersionPolicy({"v1": 0})))
    assert ">= 0" in str(policy_problem(alias, VersionPolicy({"v1": -1, "v2": 2})))
    assert "at most 1" in str(policy_problem(alias, VersionPolicy({"v1": 1}, {"v2": 2})))


@pytest.mark.parametrize("change", [{"weights": {"v9": 1}}, {"fallback": ["v9"]},
                                    {"versions": {"bad name": {"model": "m"}}},
                                    {"versions": {}}])
def test_bad_alias_settings_fail_at_start(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AliasSettings.model_validate({**CHAT_ALIAS, **change})


@pytest.mark.parametrize(("settings", "named"), [
    ({"aliases": {"bad name": CHAT_ALIAS}}, "alias name 'bad name'"),
    ({"aliases": {"chat": {**CHAT_ALIAS, "versions": {"v/1": {"model": "m"}}}}},
     "version name 'v/1'")])
def test_alias_and_version_names_are_checked(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        VersionsSettings.model_validate(settings)


def test_cards_list_the_aliases_with_a_version_served() -> None:
    r = router()
    assert [card["id"] for card in r.cards({"base-a"})] == ["chat"]
    assert r.cards({"other"}) == []


class Recorder:
    """A mirror that records what it is asked to copy."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, str]] = []

    def start(self, context: RequestContext, alias: str, version: str, served: str) -> None:
        self.started.append((context.id, version, served))


def test_a_shadow_fraction_mirrors_that_share_of_requests_to_other_versions() -> None:
    r = router(weights={"v1": 1})
    recorder = Recorder()
    r.mirror = recorder  # type: ignore[assignment]
    r._policies["chat"] = VersionPolicy({"v1": 1}, shadow={"v1": 1.0, "v3": 0.2})
    for i in range(5000):
        r.resolve(ctx(f"req-{i}"), mirror=True)
    r.resolve(ctx("pinned", pin="v1"), mirror=True)
    assert {(v, s) for _, v, s in recorder.started} == {("v3", "base-c")}
    assert abs(len(recorder.started) / 5000 - 0.2) <= 0.015
    recorder.started.clear()
    for i in range(200):  # not a generation request (an embedding, a realtime session)
        r.resolve(ctx(f"req-{i}"))
    assert recorder.started == []


async def test_the_periodic_reconcile_picks_up_a_change_made_elsewhere() -> None:
    settings = VersionsSettings.model_validate(
        {"reconcile_s": 0.01, "aliases": {"chat": CHAT_ALIAS}})
    r = VersionRouter(settings, MemoryVersionPolicies(), lambda _: True)
    changes: list[dict[str, float]] = []
    changed = asyncio.Event()

    def seen(alias: str, policy: VersionPolicy) -> None:
        changes.append(policy.weights)
        changed.set()

    r.on_change = seen
    task = asyncio.create_task(r.run_reconcile())
    try:
        await r.store.set("chat", VersionPolicy({"v3": 1}))  # another replica's write
        async with asyncio.timeout(5):
            await changed.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert changes == [{"v3": 1}]
    assert r.policy("chat").weights == {"v3": 1}
