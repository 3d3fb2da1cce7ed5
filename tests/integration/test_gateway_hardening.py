"""Hostile and careless clients: what they may see, what they can make the gateway do."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from pydantic import ValidationError

from gateway.edge.protocol import HttpToolsProtocol
from loadtests.launch import free_port
from simulator import SimConfig

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
FAST = SimConfig(decode_step_ms=1, prefill_base_ms=1)


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def requests_counted(metrics: str, status: str, *, endpoint: str = "chat") -> float:
    line = (f'sluice_requests_total{{endpoint="{endpoint}",engine="none",model="unknown",'
            f'status="{status}",version="none"}} ')
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0][len(line):]) if found else 0.0


async def tokens_delivered(sim: str) -> int:
    async with httpx.AsyncClient() as http:
        return int((await http.get(sim + "/sim/faults")).json()["tokens_delivered"])


# Disclosure and authentication


async def test_with_keys_ready_says_only_its_status_and_metrics_needs_a_key(
        start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], api_keys=[KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        health = await http.get("/health")
        ready = await http.get("/ready")
        wrong_key = await http.get("/ready", headers={"Authorization": "Bearer nope"})
        ready_with_key = await http.get("/ready", headers=AUTH)
        metrics = await http.get("/metrics")
        metrics_with_key = await http.get("/metrics", headers=AUTH)
    assert health.status_code == 200
    assert ready.status_code == wrong_key.status_code == 200
    assert ready.json() == wrong_key.json() == {"status": "ready"}
    assert ready_with_key.json()["engines"][0]["url"] == sim
    assert metrics.status_code == 401
    assert metrics.headers["www-authenticate"] == "Bearer"
    assert error_of(metrics)["type"] == "authentication_error"
    assert metrics_with_key.status_code == 200
    assert "sluice_requests_total" in metrics_with_key.text


async def test_not_ready_without_a_key_is_a_bare_503(start_gateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{free_port()}"], api_keys=[KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        ready = await http.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not_ready"}


async def test_open_observability_never_shows_engine_urls_or_errors(start_gateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = await start_gateway([dead], api_keys=[KEY], observability={"open": True})
    async with httpx.AsyncClient(base_url=gateway) as http:
        ready = await http.get("/ready")
        metrics = await http.get("/metrics")
        ready_with_key = await http.get("/ready", headers=AUTH)
    assert ready.status_code == 503
    (engine,) = ready.json()["engines"]
    assert engine["name"] == "e0"
    assert engine["healthy"] is False
    assert "url" not in engine
    assert "error" not in engine
    assert str(urlsplit(dead).port) not in ready.text
    assert metrics.status_code == 200
    assert ready_with_key.json()["engines"][0]["url"] == dead
    assert ready_with_key.json()["engines"][0]["error"]


async def test_without_keys_ready_lists_engines_but_not_their_urls(start_gateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = await start_gateway([dead])
    async with httpx.AsyncClient(base_url=gateway) as http:
        ready = await http.get("/ready")
    (engine,) = ready.json()["engines"]
    assert engine["healthy"] is False
    assert "url" not in engine
    assert "error" not in engine
    assert str(urlsplit(dead).port) not in ready.text


@pytest.mark.parametrize("keys", [[""], ["short"], [KEY, " " * 20], [KEY + "\u00e9"]])
async def test_empty_short_or_unsendable_api_keys_stop_the_gateway(
        start_sim, start_gateway, keys: list[str]) -> None:
    sim = await start_sim(FAST)
    with pytest.raises(ValidationError, match=r"api_keys\[\d\]") as info:
        await start_gateway([sim], api_keys=keys)
    assert KEY not in str(info.value)  # a rejected configuration does not print the keys


async def test_401_challenges_and_405_says_what_is_allowed(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], api_keys=[KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        no_key = await http.post("/v1/chat/completions", json=CHAT)
        empty_key = await http.post("/v1/chat/completions", json=CHAT,
                                    headers={"Authorization": "Bearer"})
        wrong_key = await http.post("/v1/chat/completions", json=CHAT,
                                    headers={"Authorization": "Bearer " + "x" * 24})
        get_chat = await http.get("/v1/chat/completions", headers=AUTH)
        post_models = await http.post("/v1/models", headers=AUTH)
    assert no_key.status_code == empty_key.status_code == wrong_key.status_code == 401
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert wrong_key.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert get_chat.status_code == 405
    assert get_chat.headers["allow"] == "POST"
    assert error_of(get_chat)["code"] == "method_not_allowed"
    assert post_models.status_code == 405
    assert set(post_models.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert error_of(post_models)["type"] == "invalid_request_error"


# Content types


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1", "text/json",
])
async def test_a_body_not_declared_json_is_415_before_any_work(
        start_sim, start_gateway, content_type: str | None) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    headers = {} if content_type is None else {"content-type": content_type}
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", content=orjson.dumps(CHAT),
                                   headers=headers)
        metrics = (await http.get("/metrics")).text
    assert response.status_code == 415
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "unsupported_media_type"
    assert await tokens_delivered(sim) == 0
    assert requests_counted(metrics, "415") == 1


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;Charset=UTF-8",
    "application/vnd.openai+json"])
async def test_json_content_types_are_accepted(start_sim, start_gateway,
                                               content_type: str) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/completions", headers={"content-type": content_type},
                                   content=orjson.dumps({"model": "sim-model", "prompt": "hi",
                                                         "max_tokens": 2}))
    assert response.status_code == 200


# Deeply nested JSON


def nested(depth: int) -> object:
    value: object = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("field", "depth"), [
    ("metadata", 100), ("metadata", 300), ("tools", 600), ("response_format", 1000)])
@pytest.mark.parametrize("stream", [False, True])
async def test_json_nested_too_deep_is_400_naming_the_field(
        start_sim, start_gateway, field: str, depth: int, stream: bool) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    # orjson parses up to 1024 levels; the body object is one of them.
    raw = orjson.dumps({**CHAT, "stream": stream})[:-1] + f',"{field}":'.encode() \
        + b"[" * depth + b"]" * depth + b"}"
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"})
        after = await http.post("/v1/chat/completions", json=CHAT)  # same connection
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == field
    assert error["code"] == "nesting_too_deep"
    assert after.status_code == 200


async def test_nesting_within_the_limit_goes_through(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions",
                                   json={**CHAT, "metadata": nested(60)})
    assert response.status_code == 200


# Accounting


async def test_requests_refused_before_the_pipeline_are_counted(
        start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], max_body_bytes=4096)
    keyed = await start_gateway([sim], api_keys=[KEY])
    json_type = {"content-type": "application/json"}

    async def chunked_big():  # no Content-Length: refused while reading
        yield orjson.dumps({**CHAT, "prompt": "x" * 5000})

    async with httpx.AsyncClient(base_url=gateway) as http:
        await http.post("/v1/chat/completions", content=b"{oops", headers=json_type)
        await http.post("/v1/completions", content=b"[]", headers=json_type)
        await http.post("/v1/chat/completions", content=b"x" * 5000, headers=json_type)
        await http.post("/v1/chat/completions", content=chunked_big(), headers=json_type)
        await http.post("/v1/chat/completions", content=b"{}", headers={"content-type": "x/y"})
        await http.post("/v1/chat/completions", json={**CHAT, "metadata": nested(200)})
        await http.post("/v1/chat/completions", json=CHAT)
        metrics = (await http.get("/metrics")).text
    async with httpx.AsyncClient(base_url=keyed) as http:
        await http.post("/v1/chat/completions", json=CHAT)
        keyed_metrics = (await http.get("/metrics", headers=AUTH)).text
    assert requests_counted(metrics, "400") == 2
    assert requests_counted(metrics, "400", endpoint="completions") == 1
    assert requests_counted(metrics, "413") == 2
    assert requests_counted(metrics, "415") == 1
    director = 'engine="e0",model="sim-model",status="200",version="none"} 1.0'
    assert director in metrics  # the director's
    assert requests_counted(keyed_metrics, "401") == 1


# HTTP/1.0


async def http10_stream(gateway: str) -> bytes:
    body = orjson.dumps({**CHAT, "stream": True})
    address = urlsplit(gateway)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nHost: gateway\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # to EOF: the server must close the connection
    finally:
        writer.close()


def assert_close_delimited(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = head.lower().split(b"\r\n")
    assert headers[0].startswith(b"http/1.1 200")
    assert not any(h.startswith(b"transfer-encoding:") for h in headers)
    assert b"connection: close" in headers
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b"data: {")
    assert events[-1] == b"data: [DONE]"


async def test_http10_stream_is_close_delimited(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], http=HttpToolsProtocol)
    assert_close_delimited(await http10_stream(gateway))
    async with httpx.AsyncClient(base_url=gateway) as http, http.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.headers["transfer-encoding"] == "chunked"  # HTTP/1.1: as before
        assert (await response.aread()).endswith(b"data: [DONE]\n\n")


async def test_http10_stream_is_close_delimited_as_served(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim])
    assert_close_delimited(await http10_stream(gateway))
