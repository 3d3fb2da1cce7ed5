"""Property-based fuzzing of the generation routes: whatever arrives, no 5xx, every error
in OpenAI's shape, and the gateway still serves afterwards.

Bodies range from valid to hostile (wrong types, huge numbers, deep nesting, unicode,
nulls, extra fields, bytes that are not JSON); headers from the right content type to odd
ones, with or without keys, some of them long. One gateway with one simulator engine (no
faults injected) serves every example, so a request that breaks it fails later ones too.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from simulator import SimConfig

KEY = "sk-fuzz-0123456789abcdef"
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

# A short-lived engine: nothing a request asks for can keep it busy for long.
SIM = SimConfig(prefill_base_ms=1, decode_step_ms=1, max_model_len=256, default_max_tokens=8)

# What a client can put in a header: printable ASCII, no surrounding spaces.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                      max_size=64).map(str.strip)
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=16)
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream",
          "stream_options", "temperature", "top_p", "n", "seed", "user", "stop", "logprobs",
          "tools", "response_format", "metadata"]
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot", ""]) | json_values,
     "content": st.text(max_size=60) | json_values}), max_size=3)


def nested(depth: int, open_: bytes, close: bytes, leaf: bytes = b"") -> bytes:
    """``depth`` levels of ``open_`` ... ``close`` around ``leaf``."""
    return open_ * depth + leaf + close * depth


@st.composite
def bodies(draw: st.DrawFn, endpoint: str) -> bytes:
    """A request body: a valid one with fields changed, added or removed; any JSON value;
    or bytes that are hostile JSON, or not JSON at all."""
    kind = draw(st.sampled_from(["mutated", "mutated", "deep", "deep", "value", "raw"]))
    start = orjson.dumps(CHAT if endpoint == "chat" else COMPLETION)[:-1]
    field = b',"' + draw(st.sampled_from(FIELDS)).encode() + b'":'
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        # Around the gateway's limit (64), orjson's (254 to write, 1024 to read), and past.
        depth = draw(st.sampled_from([63, 64, 65, 253, 254, 255, 600, 1023, 1024, 1100])
                     | st.integers(1, 1100))
        if draw(st.booleans()):
            return start + field + nested(depth, b"[", b"]") + b"}"
        return start + field + nested(depth, b'{"a":', b"}", b"1") + b"}"
    if kind == "raw":
        return draw(st.sampled_from([
            start + field + b"NaN}", start + field + b"1e999}", start + field + b'"\\ud800"}',
            start + field + b'"\\u0000\xf0\x9f\x98\x80"}', b"\xef\xbb\xbf" + start + b"}",
            start, b"", b"null"]) | st.binary(max_size=200))
    body: dict[str, Any] = dict(CHAT if endpoint == "chat" else COMPLETION)
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if draw(st.booleans()):
            body.pop(field, None)
        elif field == "messages":
            body[field] = draw(messages | json_values)
        elif field in ("max_tokens", "max_completion_tokens", "n", "seed"):
            body[field] = draw(st.integers(-(2**70), 2**70) | st.integers(0, 300) | json_values)
        elif field == "stream":
            body[field] = draw(st.booleans() | json_values)
        else:
            body[field] = draw(json_values)
    for name, value in draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3)).items():
        body.setdefault(name, value)
    return json.dumps(body).encode()


content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/vnd.x+json",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=z",
    "application/json; charset=latin-1", "", "*/*"]) | header_text


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers). One request in four has odd headers; the others carry the
    key and a JSON content type, so that their bodies reach the pipeline."""
    endpoint = draw(st.sampled_from(sorted(PATHS)))
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    if draw(st.integers(0, 3)) == 0:
        content_type = draw(st.none() | content_types)
        if content_type is None:
            del headers["content-type"]
        else:
            headers["content-type"] = content_type
        auth = draw(st.sampled_from(["right", "none", "wrong", "odd"]))
        if auth == "none":
            del headers["authorization"]
        elif auth == "wrong":
            headers["authorization"] = ("Bearer " + draw(header_text)).strip()
        elif auth == "odd":
            headers["authorization"] = draw(header_text)
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["x-session-id", "x-request-id", "user-agent", "x-pad"]))] \
            = draw(header_text | st.just("v" * 8000))
    return PATHS[endpoint], draw(bodies(endpoint)), headers


def assert_openai_error(response: httpx.Response, raw: bytes) -> None:
    body = orjson.loads(raw)
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert isinstance(error["type"], str)


@pytest.fixture
async def target(start_sim, start_gateway) -> str:
    sim = await start_sim(SIM)
    return await start_gateway([sim], api_keys=[KEY], max_body_bytes=64 * 1024)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(request=requests())
async def test_no_input_breaks_the_gateway(target: str,
                                           request: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = request
    async with httpx.AsyncClient(base_url=target, timeout=15) as http:
        async with http.stream("POST", path, content=body, headers=headers) as response:
            raw = await response.aread()
        event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
        assert response.status_code < 500, (response.status_code, raw[:500])
        if response.status_code != 200:
            assert_openai_error(response, raw)
        elif response.headers["content-type"].startswith("text/event-stream"):
            assert raw.endswith(b"data: [DONE]\n\n")
            for line in raw.split(b"\n\n")[:-2]:
                payload = orjson.loads(line.removeprefix(b"data: "))
                if "error" in payload:
                    assert_openai_error(response, line.removeprefix(b"data: "))
        else:
            assert isinstance(orjson.loads(raw), dict)
        # Still healthy, and still serving a normal request.
        assert (await http.get("/health")).status_code == 200
        normal = await http.post("/v1/chat/completions", json=CHAT,
                                 headers={"authorization": f"Bearer {KEY}"})
        assert normal.status_code == 200, normal.text
