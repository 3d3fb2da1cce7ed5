"""While the gateway stops: during the delay ``/ready`` is 503 and every request is
served; once the drain begins new requests are refused and open streams go on.

The SIGTERM tests (test_drain.py) see uvicorn close its listener; here each step is taken
on an in-process gateway whose listener stays open, so what the app itself answers to
probes and new requests at each step is visible.
"""

from __future__ import annotations

import httpx
import orjson
from starlette.applications import Starlette

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import events_of, gateway_metric

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "count slowly"}]}


async def test_an_announced_gateway_is_not_ready_but_serves_every_request(
        start_sim: StartSim, start_gateway: StartGateway,
        gateway_apps: dict[str, Starlette]) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    gateway = await start_gateway([sim], drain={"delay_s": 60, "timeout_s": 60})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        gateway_apps[gateway].state.drain.announce()
        ready = await http.get("/ready")
        served = [await http.post("/v1/chat/completions", json={**CHAT, **extra})
                  for extra in ({"max_tokens": 2}, {"stream": True, "max_tokens": 2})]
        completion = await http.post("/v1/completions", json={
            "model": "sim-model", "prompt": "hello", "max_tokens": 2})
        draining = await gateway_metric(http, gateway, "sluice_draining")
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
    for response in [*served, completion]:
        assert response.status_code == 200, response.text
    assert served[1].text.endswith("data: [DONE]\n\n")
    assert draining == 1


async def test_draining_gateway_is_not_ready_and_refuses_new_requests(
        start_sim: StartSim, start_gateway: StartGateway,
        gateway_apps: dict[str, Starlette]) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=20))
    gateway = await start_gateway([sim], drain={"timeout_s": 60})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert (await http.get("/ready")).status_code == 200
        async with http.stream("POST", "/v1/chat/completions",
                               json={**CHAT, "stream": True, "max_tokens": 30}) as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_bytes()
            body = await anext(chunks)

            gateway_apps[gateway].state.drain.begin()

            ready = await http.get("/ready")
            refused = [await http.post("/v1/chat/completions", json={**CHAT, **extra})
                       for extra in ({"max_tokens": 2}, {"stream": True, "max_tokens": 2})]
            completion = await http.post("/v1/completions", json={
                "model": "sim-model", "prompt": "hello", "max_tokens": 2})
            async for data in chunks:
                body += data
        draining = await gateway_metric(http, gateway, "sluice_draining")
    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
    for response in [*refused, completion]:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "shutting_down"
        assert "retry-after" in response.headers
    events = events_of(body)
    assert events[-1] == "data: [DONE]"
    chunks_seen = [orjson.loads(e[6:]) for e in events[:-1]]
    assert not [c for c in chunks_seen if "error" in c]
    content = [c["choices"][0]["delta"].get("content") for c in chunks_seen if c["choices"]]
    assert len([t for t in content if t]) == 30  # the stream in flight finished whole
    assert draining == 1
