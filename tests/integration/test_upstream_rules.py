"""What is retried before the first byte, and the half-open breaker's single probe.

``docs/explanation/routing.md``, "Before the first byte": 4xx answers and first-token
timeouts are never retried; an open breaker lets exactly one probe request through once
``open_s`` has passed. Every test has two engines, so a retry (or a second request to a
probing engine) would have somewhere to go; each engine's own counters say what reached
it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine, StartSim
from tests.integration.fake_engine import FakeEngine, Reply, error_reply
from tests.integration.helpers import gateway_metric, sim_queued, sim_received, wait_until

QUICK = SimConfig(prefill_base_ms=1, decode_step_ms=2)
CHAT = {"model": "sim-model", "max_tokens": 2,
        "messages": [{"role": "user", "content": "tell me a story"}]}
ROUND_ROBIN = {"strategy": "round_robin"}


@pytest.mark.parametrize("stream", [True, False])
async def test_first_token_timeout_is_not_retried(start_sim: StartSim,
                                                  start_gateway: StartGateway,
                                                  stream: bool) -> None:
    sims = [await start_sim(QUICK.model_copy(update={"hang": True})) for _ in range(2)]
    # A stream is bounded by first_token_s; a non-streamed answer (sent whole when
    # done) by total_s.
    gateway = await start_gateway(sims, timeouts={"first_token_s": 0.5, "total_s": 1.0},
                                  routing={"default": ROUND_ROBIN})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        received = [await sim_received(http, sim) for sim in sims]
        retries = await gateway_metric(http, gateway, 'sluice_retries_total{model="sim-model",'
                                                      'version="none"}')
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout_error"
    assert sorted(received) == [0, 1]  # one engine waited; the other never saw the request
    assert retries == 0


ERRORS = [
    (400, {"message": "temperature must be non-negative", "type": "BadRequestError",
           "param": "temperature", "code": "invalid_temperature"}),
    (404, {"message": "The model `sim-model-lora` does not exist.", "type": "NotFoundError",
           "param": "model", "code": "adapter_not_loaded"}),
    (422, {"message": "unprocessable field", "type": "UnprocessableEntity",
           "param": "messages.0.content", "code": "bad_content"}),
]


@pytest.mark.parametrize(("status", "error"), ERRORS)
@pytest.mark.parametrize("stream", [True, False])
async def test_engine_4xx_is_passed_on_unchanged_and_not_retried(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway, status: int,
        error: dict[str, str], stream: bool) -> None:
    reply: Reply = error_reply(status, error)
    engines: list[FakeEngine] = [await start_fake_engine(reply) for _ in range(2)]
    gateway = await start_gateway([e.url for e in engines], routing={"default": ROUND_ROBIN})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        retries = await gateway_metric(http, gateway, 'sluice_retries_total{model="sim-model",'
                                                      'version="none"}')
        ready = (await http.get("/ready")).json()
    assert response.status_code == status
    passed = response.json()["error"]
    assert set(passed) == {"message", "type", "param", "code"}
    assert (passed["message"], passed["param"], passed["code"]) == (
        error["message"], error["param"], error["code"])
    assert sorted(len(e.received) for e in engines) == [0, 1]
    assert retries == 0
    # The engine answered: the request was at fault, not the engine.
    assert [e["circuit"] for e in ready["engines"]] == ["closed", "closed"]


async def test_half_open_breaker_lets_one_probe_through(start_sim: StartSim,
                                                        start_gateway: StartGateway) -> None:
    flaky = await start_sim(QUICK.model_copy(update={"error_rate": 1.0}))
    healthy = await start_sim(QUICK)
    gateway = await start_gateway(
        [flaky, healthy], routing={"default": ROUND_ROBIN}, timeouts={"first_token_s": 30},
        resilience={"breaker": {"failure_threshold": 1, "open_s": 0.3}})

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        async def circuit(state: str) -> bool:
            return bool((await http.get("/ready")).json()["engines"][0]["circuit"] == state)

        async def request() -> httpx.Response:
            return await http.post("/v1/chat/completions", json=CHAT)

        for _ in range(4):  # round-robin reaches the flaky engine; its failure is retried
            assert (await request()).status_code == 200
            if await circuit("open"):
                break
        assert await circuit("open")
        # The engine recovers but holds every request it gets, so a probe stays in flight.
        await http.post(flaky + "/sim/faults", json={"error_rate": 0.0, "hang": True})

        async def half_open() -> bool:
            return await circuit("half_open")
        await wait_until(half_open, "the breaker to turn half-open")

        probe: asyncio.Task[httpx.Response] | None = None
        for _ in range(4):  # until one request lands on the flaky engine: the probe
            task = asyncio.create_task(request())

            async def placed(task: asyncio.Task[httpx.Response] = task) -> bool:
                return task.done() or await sim_queued(http, flaky) > 0
            await wait_until(placed, "the request to be answered or held")
            if not task.done():
                probe = task
                break
            assert task.result().status_code == 200
        assert probe is not None, "no request was sent to the half-open engine"

        others = [asyncio.create_task(request()) for _ in range(6)]

        async def settled() -> bool:
            return all(t.done() for t in others) or await sim_queued(http, flaky) > 1
        await wait_until(settled, "the requests sent during the probe to settle")
        held = await sim_queued(http, flaky)
        await http.post(flaky + "/sim/faults", json={"hang": False})
        probe_response = await probe
        statuses = [(await t).status_code for t in others]
        assert held == 1, f"{held} requests reached the engine while its probe was in flight"
        assert statuses == [200] * 6
        assert probe_response.status_code == 200
        assert await circuit("closed")
