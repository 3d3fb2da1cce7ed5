"""Every request gives its admission slot back, however it ends.

With a model limit of one request in flight, a slot kept by a request that failed (502,
504, an error event mid-stream) or whose client left would answer every later request
429 for good; each step below only passes when the previous one gave its slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import events_of, gateway_metric, sim_queued, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "tell me a story"}]}
SHORT = {**CHAT, "max_tokens": 2}
LONG_STREAM = {**CHAT, "stream": True, "max_tokens": 500}
IN_FLIGHT = 'sluice_requests_in_flight{model="sim-model",version="none"}'


@dataclass
class OneSlot:
    """A gateway admitting one request at a time, its simulator and a client."""

    gateway: str
    sim: str
    http: httpx.AsyncClient

    async def faults(self, **settings: object) -> None:
        response = await self.http.post(self.sim + "/sim/faults", json=settings)
        assert response.status_code == 200

    async def idle(self) -> None:
        async def nothing_in_flight() -> bool:
            return await gateway_metric(self.http, self.gateway, IN_FLIGHT) == 0
        await wait_until(nothing_in_flight, "the gateway's in-flight gauge to reach 0")

    async def still_admits(self) -> None:
        response = await self.http.post("/v1/chat/completions", json=SHORT)
        assert response.status_code == 200, response.text
        rejected = await gateway_metric(
            self.http, self.gateway, 'sluice_admission_rejections_total{model="sim-model",'
                                     'version="none"}')
        assert rejected == 0


@pytest.fixture
async def one_slot(request: pytest.FixtureRequest, start_sim: StartSim,
                   start_gateway: StartGateway) -> AsyncIterator[OneSlot]:
    timeout_s: float = request.param
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=20))
    gateway = await start_gateway(
        [sim], admission={"models": {"sim-model": 1}},
        # A non-streamed answer (sent whole when done) is bounded by total_s.
        timeouts={"first_token_s": timeout_s, "between_tokens_s": timeout_s,
                  "total_s": max(4 * timeout_s, 2.0)},
        resilience={"breaker": {"failure_threshold": 100}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        slot = OneSlot(gateway, sim, http)
        await slot.still_admits()
        yield slot


@pytest.mark.parametrize("one_slot", [0.5], indirect=True)
async def test_admission_slot_is_released_after_errors(one_slot: OneSlot) -> None:
    http = one_slot.http
    await one_slot.faults(error_rate=1.0)  # engine 5xx before the first byte: 502
    failed = await http.post("/v1/chat/completions", json=SHORT)
    assert failed.status_code == 502, failed.text

    await one_slot.faults(error_rate=0.0, hang=True)  # no first token in time: 504
    for stream in (True, False):
        timed_out = await http.post("/v1/chat/completions", json={**SHORT, "stream": stream})
        assert timed_out.status_code == 504, timed_out.text
    await one_slot.faults(hang=False)

    # The engine stalls after the first byte and there is no other engine: error event.
    async with http.stream("POST", "/v1/chat/completions", json=LONG_STREAM) as response:
        assert response.status_code == 200
        chunks = response.aiter_bytes()
        body = await anext(chunks)
        await one_slot.faults(hang=True)
        async for data in chunks:
            body += data
    assert '"error"' in events_of(body)[-2]
    await one_slot.faults(hang=False)
    await one_slot.idle()
    await one_slot.still_admits()


@pytest.mark.parametrize("one_slot", [30.0], indirect=True)
async def test_admission_slot_is_released_when_the_client_leaves(one_slot: OneSlot) -> None:
    http = one_slot.http
    # Mid-stream.
    async with http.stream("POST", "/v1/chat/completions", json=LONG_STREAM) as response:
        assert response.status_code == 200
        await anext(response.aiter_bytes())
    await one_slot.idle()
    await one_slot.still_admits()

    # While the request waits for its first token.
    await one_slot.faults(hang=True)
    waiting = asyncio.create_task(
        http.post("/v1/chat/completions", json={**SHORT, "stream": True}))

    async def queued_on_the_engine() -> bool:
        return await sim_queued(http, one_slot.sim) == 1
    await wait_until(queued_on_the_engine, "the request to reach the engine")
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await one_slot.faults(hang=False)
    await one_slot.idle()
    await one_slot.still_admits()
