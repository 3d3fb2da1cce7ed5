"""Bad input and failing engines: always an OpenAI error with the right status."""

from __future__ import annotations

import httpx
import orjson
import pytest

from loadtests.launch import free_port
from simulator import SimConfig

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture
async def gateway(start_sim, start_gateway) -> str:
    sim = await start_sim(SimConfig(max_model_len=256, decode_step_ms=1, prefill_base_ms=1))
    return await start_gateway([sim], max_body_bytes=4096)


@pytest.mark.parametrize(("raw", "param", "code"), [
    (b"{oops", None, None),
    (b"[]", None, None),
    (orjson.dumps({**CHAT, "messages": []}), "messages", "invalid_value"),
    (orjson.dumps({**CHAT, "max_tokens": "many"}), "max_tokens", "invalid_type"),
    (orjson.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}),
     "messages.0.content", "invalid_type"),
])
async def test_bad_request_bodies_are_400(gateway: str, raw: bytes, param: str | None,
                                          code: str | None) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


async def test_unknown_model_is_404(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "model": "nope-123"})
        invalid = await http.post("/v1/chat/completions", json={**CHAT, "messages": []})
        metrics = (await http.get("/metrics")).text
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
    # Client-chosen names never become label values; rejected requests are still counted.
    assert "nope-123" not in metrics
    assert 'model="unknown",status="404",version="none"} 1.0' in metrics
    assert invalid.status_code == 400
    assert 'model="sim-model",status="400",version="none"} 1.0' in metrics


async def test_body_over_the_limit_is_413(gateway: str) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with httpx.AsyncClient(base_url=gateway) as http:
        declared = await http.post("/v1/chat/completions", json=big)

        async def chunked():  # no Content-Length: the limit is enforced while reading
            yield orjson.dumps(big)

        streamed = await http.post("/v1/chat/completions", content=chunked(),
                                   headers={"content-type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"


async def test_max_tokens_beyond_the_context_is_400(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        too_many = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 300})
        prompt_too_long = await http.post("/v1/chat/completions", json={
            **CHAT, "max_tokens": 200,
            "messages": [{"role": "user", "content": "word " * 100}]})
    assert too_many.status_code == 400
    assert error_of(too_many)["code"] == "context_length_exceeded"
    assert error_of(too_many)["param"] == "max_tokens"
    assert prompt_too_long.status_code == 400  # the engine's own refusal, passed on
    assert "context" in str(error_of(prompt_too_long)["message"]).lower()


async def test_unknown_route_and_wrong_method(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as http:
        missing = await http.get("/v1/nothing")
        method = await http.get("/v1/chat/completions")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    assert method.status_code == 405
    error_of(method)


async def test_no_engine_up_is_503(start_gateway) -> None:
    gateway = await start_gateway([f"http://127.0.0.1:{free_port()}"])
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
        ready = await http.get("/ready")
    assert response.status_code == 503
    assert error_of(response)["code"] == "no_healthy_engine"
    assert ready.status_code == 503
    assert ready.json()["engines"][0]["healthy"] is False


async def test_engine_that_never_answers_is_504(start_sim, start_gateway) -> None:
    sim = await start_sim(SimConfig(hang=True))
    # A stream is bounded by first_token_s; a non-streamed answer (sent whole when done)
    # by total_s.
    gateway = await start_gateway([sim], timeouts={"first_token_s": 0.5, "total_s": 1.5})
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        whole = await http.post("/v1/chat/completions", json=CHAT)
    for response in (streamed, whole):
        assert response.status_code == 504
        assert error_of(response)["type"] == "timeout_error"


async def test_engine_stalling_mid_stream_ends_with_error_event(start_sim, start_gateway) -> None:
    sim = await start_sim(SimConfig(decode_step_ms=5))
    gateway = await start_gateway([sim], timeouts={"between_tokens_s": 0.5})
    body = b""
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={**CHAT, "max_tokens": 2000, "stream": True}) as response:
        assert response.status_code == 200
        async for data in response.aiter_bytes():
            if not body:
                await http.post(sim + "/sim/faults", json={"hang": True})
            body += data
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["type"] == "timeout_error"


async def test_engine_500_is_502(start_sim, start_gateway) -> None:
    sim = await start_sim(SimConfig(error_rate=1.0))
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 502
    assert error_of(response)["type"] == "upstream_error"


async def test_engine_dying_before_the_first_byte_is_retried_elsewhere(
        start_sim, spawn_sim, start_gateway) -> None:
    alive = await start_sim(SimConfig(decode_step_ms=1, prefill_base_ms=1))
    doomed = await spawn_sim("--decode-step-ms", "1")
    gateway = await start_gateway([doomed.url, alive], health_interval_s=3600)
    doomed.kill()  # the gateway still believes it healthy: no health check until much later
    async with httpx.AsyncClient(base_url=gateway) as http:
        statuses = [(await http.post("/v1/chat/completions", json=CHAT)).status_code
                    for _ in range(6)]
        ready = (await http.get("/ready")).json()
        metrics = (await http.get("/metrics")).text
    assert statuses == [200] * 6
    assert [e["healthy"] for e in ready["engines"]] == [False, True]
    assert 'sluice_retries_total{model="sim-model",version="none"} 1.0' in metrics
    assert 'sluice_engine_up{engine="e0"} 0.0' in metrics


async def test_api_keys(start_sim, start_gateway) -> None:
    sim = await start_sim(SimConfig(decode_step_ms=1, prefill_base_ms=1))
    gateway = await start_gateway([sim], api_keys=["k1-0123456789abcdef"])
    async with httpx.AsyncClient(base_url=gateway) as http:
        none = await http.post("/v1/chat/completions", json=CHAT)
        wrong = await http.post("/v1/chat/completions", json=CHAT,
                                headers={"Authorization": "Bearer k2-0123456789abcdef"})
        right = await http.post("/v1/chat/completions", json=CHAT,
                                headers={"Authorization": "Bearer k1-0123456789abcdef"})
        health = await http.get("/health")
    assert none.status_code == wrong.status_code == 401
    assert error_of(none)["type"] == "authentication_error"
    assert right.status_code == 200
    assert health.status_code == 200
