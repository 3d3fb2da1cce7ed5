"""The cache policy: which requests are cacheable, and one key per distinct answer."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cache import CachePolicy, cache_key, deterministic, read_directives, serves, whole
from gateway.core.context import CacheUse, RequestContext
from gateway.core.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint
from gateway.core.endpoints import PASSTHROUGH as ENDPOINTS
from gateway.core.protocol import validate

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
EMBED = {"model": "m", "input": ["one", "two"]}


def ctx(body: dict[str, Any], *, principal: str | None = "k1", endpoint: Any = CHAT,
        model: str = "m") -> RequestContext:
    context = RequestContext.new("r", endpoint, body, principal=principal)
    if endpoint in (CHAT, COMPLETIONS):  # the passthrough validates no request model
        context.request = validate(endpoint.model, body)
    context.model = model
    return context


def key(body: dict[str, Any], **kw: Any) -> str:
    return cache_key(ctx(body, **kw), shared=False)


@pytest.mark.parametrize(("body", "expected"), [
    ({"temperature": 0}, True),
    ({"temperature": 0.0}, True),
    ({"seed": 7, "temperature": 0.9}, True),
    ({"temperature": 0, "n": 1}, True),
    ({}, False),  # the engine's default temperature samples
    ({"temperature": 0.7}, False),
    ({"temperature": 0, "n": 2}, False),
    ({"seed": None, "temperature": 1}, False),
    ({"temperature": "0"}, False),
])
def test_deterministic(body: dict[str, Any], expected: bool) -> None:
    assert deterministic(body) is expected


def test_fields_that_do_not_change_the_answer_leave_the_key_alone() -> None:
    same = key(BASE)
    assert key({**BASE, "user": "u-9", "metadata": {"a": "b"}, "store": True,
                "priority": 3, "request_id": "x", "service_tier": "auto"}) == same
    assert key({**BASE, "stream_options": {"include_usage": True}}) == same
    assert key({**BASE, "temperature": 0.0}) == same
    assert key(dict(reversed(list(BASE.items())))) == same  # field order


@pytest.mark.parametrize("change", [
    {"max_tokens": 5}, {"seed": 1}, {"top_p": 0.5}, {"stop": ["x"]},
    {"messages": [{"role": "user", "content": "hi!"}]}, {"logprobs": True},
    {"response_format": {"type": "json_object"}}, {"tools": [{"type": "function"}]},
    {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
])
def test_fields_that_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


def test_the_key_holds_principal_model_form_and_endpoint() -> None:
    same = key(BASE)
    assert key(BASE, principal="k2") != same
    assert key(BASE, model="m-v2") != same  # the resolved version, not the name sent
    assert key({**BASE, "stream": True}) != same  # a stream is stored as events
    both = {**BASE, "prompt": "hi"}
    assert key(both, endpoint=COMPLETIONS) != key(both)


def test_a_shared_key_space_leaves_the_principal_out() -> None:
    one, two = ctx(BASE, principal="k1"), ctx(BASE, principal="k2")
    assert cache_key(one, shared=True) == cache_key(two, shared=True)


def test_policy_keeps_out_sampled_no_store_and_disabled() -> None:
    policy = CachePolicy()
    assert policy.key(ctx(BASE)) is not None
    assert policy.key(ctx({**BASE, "temperature": 1})) is None
    opted = ctx({**BASE, "temperature": 1})
    opted.cache.allow = True
    assert policy.key(opted) is not None
    kept_out = ctx(BASE)
    kept_out.cache.no_store = True
    assert policy.key(kept_out) is None


@pytest.mark.parametrize(("control", "opt_in", "no_store", "no_cache", "allow"), [
    (None, None, False, False, False),
    ("no-store", None, True, False, False),
    ("No-Cache, max-age=0", None, False, True, False),
    ("no-cache,no-store", "allow", True, True, True),
    (None, " Allow ", False, False, True),
    (None, "hit", False, False, False),
])
def test_read_directives(control: str | None, opt_in: str | None, no_store: bool,
                         no_cache: bool, allow: bool) -> None:
    use = CacheUse()
    read_directives(use, control, opt_in)
    assert (use.no_store, use.no_cache, use.allow) == (no_store, no_cache, allow)


def test_every_embeddings_request_is_cacheable_and_nothing_else_passed_through() -> None:
    policy = CachePolicy()
    assert policy.key(ctx(EMBED, endpoint=EMBEDDINGS)) is not None
    assert policy.key(ctx({**EMBED, "temperature": 1}, endpoint=EMBEDDINGS)) is not None
    kept_out = ctx(EMBED, endpoint=EMBEDDINGS)
    kept_out.cache.no_store = True
    assert policy.key(kept_out) is None
    for endpoint in ENDPOINTS:
        assert serves(endpoint) is (endpoint is EMBEDDINGS)
        if endpoint is not EMBEDDINGS:
            assert policy.key(ctx({**EMBED, "prompt": "x"}, endpoint=endpoint)) is None
    assert serves(CHAT)
    assert serves(COMPLETIONS)


def test_an_embeddings_key() -> None:
    same = key(EMBED, endpoint=EMBEDDINGS)
    assert key({**EMBED, "user": "u-9", "model": "alias", "priority": 2},
               endpoint=EMBEDDINGS) == same
    assert key(dict(reversed(list(EMBED.items()))), endpoint=EMBEDDINGS) == same
    for change in ({"dimensions": 8}, {"encoding_format": "base64"},
                   {"input": ["one", "two!"]}, {"input": "one"},
                   {"truncate_prompt_tokens": 3}):
        assert key({**EMBED, **change}, endpoint=EMBEDDINGS) != same, change
    assert key(EMBED, endpoint=EMBEDDINGS, principal="k2") != same
    assert key(EMBED, endpoint=EMBEDDINGS, model="m-v2") != same
    assert key(EMBED, endpoint=Endpoint("pooling", "/pooling")) != same


@pytest.mark.parametrize(("endpoint", "answer", "stored"), [
    (EMBEDDINGS, {"object": "list", "data": [{"embedding": [1.0]}]}, True),
    (EMBEDDINGS, {"object": "list", "data": []}, True),
    (EMBEDDINGS, {"object": "list", "data": None}, False),
    (EMBEDDINGS, {"object": "list"}, False),
    (EMBEDDINGS, {"choices": [{"finish_reason": "stop"}]}, False),
    (CHAT, {"choices": [{"finish_reason": "stop"}]}, True),
    (CHAT, {"data": []}, False),
])
def test_which_answers_are_whole(endpoint: Endpoint, answer: dict[str, Any],
                                 stored: bool) -> None:
    assert whole(endpoint, answer) is stored
