"""What counts against an engine's breaker, and how much of a fleet breakers may eject."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine, StartSim
from tests.integration.fake_engine import chat_chunk
from tests.integration.helpers import metric, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hello"}]}


def circuit_states(metrics: str) -> dict[str, float]:
    states = {}
    for line in metrics.splitlines():
        if line.startswith("sluice_engine_circuit_state{"):
            engine = line.split('engine="')[1].split('"')[0]
            states[engine] = float(line.rsplit(" ", 1)[1])
    return states


async def test_long_non_streamed_requests_do_not_eject_a_healthy_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    # 40 tokens at 25 ms: a 1 s answer, far past first_token_s, well within total_s.
    sim = await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=25.0))
    gateway = await start_gateway(
        [sim], timeouts={"first_token_s": 0.3, "total_s": 20},
        resilience={"breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 40,
                                                    "ignore_eos": True})
            for _ in range(3)))
        metrics = (await http.get("/metrics")).text
        after = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["usage"]["completion_tokens"] == 40 for a in answers)
    assert circuit_states(metrics) == {"e0": 0.0}
    assert after.status_code == 200


async def test_a_non_streamed_answer_past_total_s_does_not_count_against_the_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=50.0))
    gateway = await start_gateway(
        [sim], timeouts={"first_token_s": 10, "total_s": 0.5},
        resilience={"breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        long = await http.post("/v1/chat/completions",
                               json={**CHAT, "max_tokens": 100, "ignore_eos": True})
        metrics = (await http.get("/metrics")).text
        short = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert long.status_code == 504
    assert long.json()["error"]["type"] == "timeout_error"
    assert circuit_states(metrics) == {"e0": 0.0}
    assert short.status_code == 200


async def test_a_poison_request_cannot_open_every_breaker(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    """Engines that all fail one kind of request: each request is tried on at most
    ``max_same_failures`` engines, breakers eject at most half the fleet, and the
    fleet answers at once when the request kind goes away."""
    failing = SimConfig(prefill_base_ms=2.0, decode_step_ms=2.0, error_rate=1.0)
    sims = [await start_sim(failing) for _ in range(4)]
    gateway = await start_gateway(
        sims, resilience={"retries": 3, "breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        poisoned = [await http.post("/v1/chat/completions", json=CHAT) for _ in range(6)]
        for sim in sims:
            await http.post(sim + "/sim/faults", json={"error_rate": 0.0})
        metrics = (await http.get("/metrics")).text
        healthy = [await http.post("/v1/chat/completions", json=CHAT) for _ in range(8)]
        sent = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("sluice_retries_total{"))
    assert {p.status_code for p in poisoned} == {502}
    assert sent == 6  # one retry each: the same fault on two engines ends it
    states = circuit_states(metrics)
    assert sorted(states.values()).count(1.0) >= 2  # breakers did open ...
    assert [h.status_code for h in healthy] == [200] * 8  # ... yet nothing waits for open_s


async def test_a_stream_past_total_s_ends_saying_so_and_is_not_continued(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sims = [await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=20.0))
            for _ in range(2)]
    gateway = await start_gateway(
        sims, timeouts={"total_s": 0.6},
        resilience={"breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json={
            **CHAT, "stream": True, "max_tokens": 1000, "ignore_eos": True})
        metrics = (await http.get("/metrics")).text
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["type"] == "timeout_error"
    assert "total time limit" in error["message"]
    assert 'outcome="continued"' not in metrics
    assert circuit_states(metrics) == {"e0": 0.0, "e1": 0.0}


async def stalls(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Headers, then (for the request saying ``"user": "between"``) one token, then
    nothing: the gateway's stall bound has to end it."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if body.get("user") == "between":
        await response.write(chat_chunk("c1", "Once", role=True))
    await asyncio.sleep(30)  # cancelled when the gateway hangs up
    return response


@pytest.mark.parametrize("stall", ["first", "between"])
async def test_stalls_before_and_between_tokens_count_against_the_engine(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        stall: str) -> None:
    engine = await start_fake_engine(stalls)
    gateway = await start_gateway(
        [engine.url], timeouts={"first_token_s": 0.3, "between_tokens_s": 0.3},
        resilience={"breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions",
                                   json={**CHAT, "stream": True, "user": stall})
        metrics = (await http.get("/metrics")).text
    if stall == "first":
        assert response.status_code == 504
        assert response.json()["error"]["type"] == "timeout_error"
    else:
        events = [e for e in response.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert orjson.loads(events[-2][6:])["error"]["type"] == "timeout_error"
    assert metric(metrics, 'sluice_upstream_errors_total{engine="e0",kind="EngineTimeout"}') == 1
    assert circuit_states(metrics) == {"e0": 1.0}


async def test_client_disconnects_do_not_count_against_the_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=20.0))
    gateway = await start_gateway(
        [sim], resilience={"breaker": {"failure_threshold": 1, "open_s": 30}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        for _ in range(3):
            async with http.stream("POST", "/v1/chat/completions", json={
                    **CHAT, "stream": True, "max_tokens": 200, "ignore_eos": True}) as r:
                assert r.status_code == 200
                await anext(r.aiter_bytes())  # the first token, then the client leaves

        async def all_gone() -> bool:
            page = (await http.get("/metrics")).text
            return metric(page, "sluice_client_disconnects_total") == 3
        await wait_until(all_gone, "the three disconnects to be counted")
        metrics = (await http.get("/metrics")).text
        after = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert "sluice_upstream_errors_total{" not in metrics
    assert circuit_states(metrics) == {"e0": 0.0}
    assert after.status_code == 200
