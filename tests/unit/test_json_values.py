"""Any JSON value a client sends goes through parsing, validation, the cache key and the
payload sent to the engine without a gateway fault: it is a 4xx naming the field, or it
passes. (A property test: hypothesis draws arbitrary JSON documents, huge integers
included.)"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cache.policy import cache_key
from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint
from gateway.core.errors import SluiceError
from gateway.core.protocol import parse_body, validate

SCALARS = (st.none() | st.booleans() | st.text(max_size=8)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.integers(min_value=-(2**80), max_value=2**80)
           | st.sampled_from([2**63, 2**64, -(2**63) - 1, 2**64 - 1, 2**70, -(2**70)]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)
FIELDS = ("seed", "max_tokens", "max_completion_tokens", "temperature", "n", "stream",
          "stream_options", "model", "messages", "prompt", "input", "dimensions", "user",
          "logit_bias", "extra")
BASE: dict[Endpoint, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    COMPLETIONS: {"model": "m", "prompt": "hi"},
    EMBEDDINGS: {"model": "m", "input": "hi"},
}


def through_the_gateway(endpoint: Endpoint, raw: bytes) -> SluiceError | None:
    """What the gateway does with a body before the engine sees it; the refusal, if any."""
    try:
        walk(endpoint, raw)
    except SluiceError as exc:
        return exc
    return None


def walk(endpoint: Endpoint, raw: bytes) -> None:
    body = parse_body(raw)
    ctx = RequestContext.new("r", endpoint, body)
    ctx.request = validate(endpoint.model, body)
    for name in ("max_tokens", "max_completion_tokens"):  # as the director's resolve
        if type(body.get(name)) is float and hasattr(ctx.request, name):
            body[name] = getattr(ctx.request, name)
    cache_key(ctx, shared=False)
    orjson.dumps(body)  # the payload sent upstream


@settings(max_examples=400, deadline=None)
@given(endpoint=st.sampled_from(list(BASE)),
       extra=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4))
def test_any_json_body_is_a_4xx_or_passes(endpoint: Endpoint, extra: dict[str, Any]) -> None:
    refused = through_the_gateway(endpoint, json.dumps({**BASE[endpoint], **extra}).encode())
    assert refused is None or 400 <= refused.status_code < 500, refused


def test_an_integer_beyond_64_bits_passes_or_is_a_400_naming_it() -> None:
    for endpoint, field, refused in ((CHAT, "seed", False), (COMPLETIONS, "seed", False),
                                     (EMBEDDINGS, "dimensions", False),
                                     (CHAT, "max_tokens", True)):
        raw = json.dumps({**BASE[endpoint], field: 2**70}).encode()
        outcome = through_the_gateway(endpoint, raw)
        assert (outcome is not None) is refused, (field, outcome)
        if outcome is not None:
            assert (outcome.status_code, outcome.param) == (400, field)
