"""Engines failing under a live gateway: failover, breaker, retry budget, admission."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from simulator import SimConfig

QUICK = SimConfig(prefill_base_ms=1, decode_step_ms=2)
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "tell me a story"}]}
FIRST = {"routing": {"default": {"strategy": "round_robin"}}}
"""Round-robin starts at the first engine: the doomed one in these tests."""


def events_of(raw: bytes) -> list[str]:
    return [e for e in raw.decode().split("\n\n") if e]


def metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    return sum(values)


async def test_chat_stream_continues_on_another_engine(start_sim, start_gateway) -> None:
    doomed = await start_sim(QUICK.model_copy(update={"crash_after_tokens": 6}))
    spare = await start_sim(QUICK)
    gateway = await start_gateway([doomed, spare], **FIRST)
    request = {**CHAT, "stream": True, "max_tokens": 20,
               "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=request)
        metrics = (await http.get("/metrics")).text
    events = events_of(response.content)
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    assert len({c["id"] for c in chunks}) == 1  # the continuation kept the stream's id
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in content if t]) == 20
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 20
    assert metric(metrics, 'sluice_failovers_total{model="sim-model",outcome="continued",'
                           'version="none"}') == 1


async def test_completion_stream_continues_with_the_prompt_extended(start_sim,
                                                                   start_gateway) -> None:
    doomed = await start_sim(QUICK.model_copy(update={"crash_after_tokens": 4}))
    spare = await start_sim(QUICK)
    gateway = await start_gateway([doomed, spare], **FIRST)
    request = {"model": "sim-model", "prompt": "once upon a time", "stream": True,
               "max_tokens": 12}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/completions", json=request)
    events = events_of(response.content)
    assert events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) == 12


async def test_stream_that_cannot_continue_ends_with_an_error_event(start_sim,
                                                                   start_gateway) -> None:
    doomed = await start_sim(QUICK.model_copy(update={"crash_after_tokens": 4}))
    spare = await start_sim(QUICK)
    gateway = await start_gateway([doomed, spare], **FIRST)
    request = {**CHAT, "stream": True, "max_tokens": 10, "n": 2}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=request)
        metrics = (await http.get("/metrics")).text
    events = events_of(response.content)
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["type"] == "upstream_error"
    assert metric(metrics, 'sluice_failovers_total{model="sim-model",outcome="error_event",'
                           'version="none"}') == 1


async def test_failover_off_ends_with_an_error_event(start_sim, start_gateway) -> None:
    doomed = await start_sim(QUICK.model_copy(update={"crash_after_tokens": 4}))
    spare = await start_sim(QUICK)
    gateway = await start_gateway([doomed, spare], resilience={"failover": False}, **FIRST)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions",
                                   json={**CHAT, "stream": True, "max_tokens": 10})
    events = events_of(response.content)
    assert events[-1] == "data: [DONE]"
    assert "error" in orjson.loads(events[-2][6:])


async def test_non_streamed_request_is_retried_when_its_engine_dies(start_sim,
                                                                   start_gateway) -> None:
    doomed = await start_sim(QUICK.model_copy(update={"crash_after_tokens": 3}))
    spare = await start_sim(QUICK)
    gateway = await start_gateway([doomed, spare], **FIRST)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8})
        metrics = (await http.get("/metrics")).text
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 8
    # vLLM sends a non-streamed answer whole: a crash is a failure before the first byte.
    assert metric(metrics, 'sluice_retries_total{model="sim-model",version="none"}') == 1


async def test_breaker_opens_then_a_probe_closes_it(start_sim, start_gateway) -> None:
    failing = await start_sim(QUICK.model_copy(update={"error_rate": 1.0}))
    healthy = await start_sim(QUICK)
    gateway = await start_gateway(
        [failing, healthy], resilience={"breaker": {"failure_threshold": 3, "open_s": 0.5}},
        **FIRST)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        statuses = [(await http.post("/v1/chat/completions",
                                     json={**CHAT, "max_tokens": 2})).status_code
                    for _ in range(10)]
        metrics = (await http.get("/metrics")).text
        ready = (await http.get("/ready")).json()
        assert ready["engines"][0]["circuit"] == "open"
        # Three failures opened it; round-robin sent nothing more to it afterwards.
        assert metric(metrics, 'sluice_upstream_errors_total{engine="e0"') == 3
        assert 'sluice_engine_circuit_state{engine="e0"} 1.0' in metrics
        assert statuses == [200] * 10  # every failure was retried on the healthy engine
        await http.post(failing + "/sim/faults", json={"error_rate": 0.0})
        await asyncio.sleep(0.6)  # half-open: the next pick of e0 is its probe
        for _ in range(3):
            assert (await http.post("/v1/chat/completions",
                                    json={**CHAT, "max_tokens": 2})).status_code == 200
        ready = (await http.get("/ready")).json()
    assert ready["engines"][0]["circuit"] == "closed"


async def test_retry_budget_spent_means_no_retry(spawn_sim, start_sim, start_gateway) -> None:
    doomed = await spawn_sim("--decode-step-ms", "1")
    alive = await start_sim(QUICK)
    gateway = await start_gateway(
        [doomed.url, alive], health_interval_s=3600,
        resilience={"retry_budget_ratio": 0.0, "retry_budget_min_per_s": 0.0}, **FIRST)
    doomed.kill()
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        first = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        second = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        metrics = (await http.get("/metrics")).text
    assert first.status_code == 503  # the dead engine, and no budget to try another
    assert first.json()["error"]["code"] == "engine_unavailable"
    assert second.status_code == 200  # the dead engine was marked down on the way
    assert metric(metrics, 'sluice_retry_budget_exhausted_total{model="sim-model",'
                           'version="none"}') == 1
    assert metric(metrics, 'sluice_retries_total{model="sim-model",version="none"}') == 0


async def test_admission_limit_answers_429_with_retry_after(start_sim, start_gateway) -> None:
    slow = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=50))
    gateway = await start_gateway([slow], admission={"models": {"sim-model": 2},
                                                     "retry_after_s": 3})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        long = {**CHAT, "stream": True, "max_tokens": 20}
        async with http.stream("POST", "/v1/chat/completions", json=long) as one, \
                http.stream("POST", "/v1/chat/completions", json=long) as two:
            assert one.status_code == two.status_code == 200
            refused = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
            await one.aread()
            await two.aread()
        after = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        metrics = (await http.get("/metrics")).text
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200
    assert metric(metrics, 'sluice_admission_rejections_total{model="sim-model",'
                           'version="none"}') == 1


@pytest.mark.parametrize("limit_from", ["per_engine", "per_model"])
async def test_admission_limit_follows_healthy_engines(start_sim, start_gateway,
                                                       limit_from: str) -> None:
    sims = [await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=50)) for _ in range(2)]
    admission = ({"max_in_flight_per_engine": 1} if limit_from == "per_engine"
                 else {"models": {"sim-model": 2}})
    gateway = await start_gateway(sims, admission=admission)
    long = {**CHAT, "stream": True, "max_tokens": 10}
    async with (httpx.AsyncClient(base_url=gateway, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json=long) as one,
                http.stream("POST", "/v1/chat/completions", json=long) as two):
        third = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        await one.aread()
        await two.aread()
    assert (one.status_code, two.status_code, third.status_code) == (200, 200, 429)
