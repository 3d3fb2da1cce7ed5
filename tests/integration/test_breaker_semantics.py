"""What counts against an engine's breaker, and how much of a fleet breakers may eject."""

from __future__ import annotations

import asyncio

import httpx
import orjson

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim

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
