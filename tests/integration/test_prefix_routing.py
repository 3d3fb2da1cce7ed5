"""Prefix affinity through a live gateway: the score is the share of the prompt matched,
and an engine that restarts has nothing cached.

Scrapes are made rare (``scrape_interval_s``) so an engine's load is exactly the gateway's
own in-flight count and no stale scrape can tip a decision.
"""

from __future__ import annotations

import httpx

from simulator import SimConfig, SimServer
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import (
    gateway_metric,
    scraped_once,
    served_by,
    sim_queued,
    wait_until,
)

QUICK = SimConfig(prefill_base_ms=1, decode_step_ms=2)
BLOCK = 16
SHARED = "".join(f"shared block {i:02d} " for i in range(1, 5))
"""Four 16-character blocks."""
QUIET_SCRAPES = 3600.0


def completion(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": "sim-model", "prompt": prompt, "max_tokens": 2, **extra}


async def completed_by(http: httpx.AsyncClient, sims: list[str], prompt: str) -> int:
    return await served_by(http, sims, "/v1/completions", completion(prompt))


async def idle(http: httpx.AsyncClient) -> None:
    async def nothing_in_flight() -> bool:
        engines = (await http.get("/ready")).json()["engines"]
        return all(e["in_flight"] == 0 for e in engines)
    await wait_until(nothing_in_flight, "every engine's in-flight count to reach 0")


async def test_the_engine_holding_the_longer_prefix_wins(start_sim: StartSim,
                                                         start_gateway: StartGateway) -> None:
    assert len(SHARED) == 4 * BLOCK
    sims = [await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=10))
            for _ in range(2)]
    gateway = await start_gateway(
        sims, routing={"default": {"strategy": "prefix", "load_factor": 1.0,
                                   "affinity_floor": 1},
                       "prefix": {"block_chars": BLOCK}, "scrape_interval_s": QUIET_SCRAPES})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        await scraped_once(http, gateway, 2)
        # One engine gets the whole shared prefix, in a stream kept open for now.
        long_stream = completion(SHARED + "first follow up ", stream=True, max_tokens=1000)
        async with http.stream("POST", "/v1/completions", json=long_stream) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()  # kept: dropping it would close the response
            await anext(chunks)
            long_owner = [i for i, sim in enumerate(sims) if await sim_queued(http, sim)]
            assert len(long_owner) == 1
            # That engine is busy, so a prompt sharing only the first block goes to the
            # other engine (the load guard), which now holds a one-block match.
            short_owner = await completed_by(http, sims, SHARED[:BLOCK] + "other words here" * 3)
            assert short_owner != long_owner[0]
        await idle(http)
        # Both engines hold a match now, and both are idle: 4 blocks of 5 beat 1 of 5.
        # Two requests in a row, so rotation alone cannot send both to the same engine.
        for follow_up in ("next question 1 ", "next question 2 "):
            assert await completed_by(http, sims, SHARED + follow_up) == long_owner[0]


async def test_a_restarted_engine_has_no_prefix_affinity(start_gateway: StartGateway) -> None:
    sims = [SimServer(QUICK) for _ in range(2)]
    for sim in sims:
        await sim.start()
    try:
        urls = [sim.base_url for sim in sims]
        gateway = await start_gateway(
            urls, health_interval_s=0.1,
            routing={"default": {"strategy": "prefix"}, "scrape_interval_s": QUIET_SCRAPES})
        prompt = "a long conversation " * 20

        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            async def decisions(reason: str) -> float:
                return await gateway_metric(
                    http, gateway, 'sluice_routing_decisions_total{model="sim-model",'
                                   f'reason="prefix_{reason}",strategy="prefix",version="none"}}')

            async def healthy(index: int, state: bool) -> bool:
                return bool((await http.get("/ready")).json()["engines"][index]["healthy"]
                            == state)

            owner = await completed_by(http, urls, prompt)
            assert await completed_by(http, urls, prompt) == owner
            assert (await decisions("miss"), await decisions("hit")) == (1, 1)

            # The owner goes down and comes back on the same port, its cache empty.
            port = sims[owner].port
            await sims[owner].close()
            await wait_until(lambda: healthy(owner, False), "the engine to be seen down")
            sims[owner] = SimServer(QUICK, port=port)
            await sims[owner].start()
            await wait_until(lambda: healthy(owner, True), "the engine to be seen up again")

            response = await http.post("/v1/completions", json=completion(prompt))
            assert response.status_code == 200
            assert (await decisions("miss"), await decisions("hit")) == (2, 1)
    finally:
        for sim in sims:
            await sim.close()
