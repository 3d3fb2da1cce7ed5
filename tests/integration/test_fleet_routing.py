"""Routing strategies through a live gateway and several simulator engines."""

from __future__ import annotations

import asyncio

import httpx

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import (
    gateway_metric,
    metric,
    scraped_once,
    served_by,
    wait_until,
)

QUICK = SimConfig(prefill_base_ms=1, decode_step_ms=1)
QUIET_SCRAPES = 3600.0
"""A scrape interval no test outlasts: engines' loads are the gateway's own counts."""


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "sim-model", "max_tokens": 2,
            "messages": [{"role": "user", "content": text}], **extra}


async def sim_prefix_hits(http: httpx.AsyncClient, sim: str) -> float:
    return metric((await http.get(sim + "/metrics")).text, "vllm:prefix_cache_hits_total")


def requests_by_engine(metrics: str, engines: int) -> list[float]:
    return [metric(metrics, f'sluice_requests_total{{endpoint="chat",engine="e{i}"')
            for i in range(engines)]


async def test_session_affinity_keeps_each_session_on_one_engine(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sims = [await start_sim(QUICK) for _ in range(3)]
    # No load scrapes during the test: a scrape that saw an engine still finishing the
    # previous request would make it look busy and move a session away from it.
    gateway = await start_gateway(sims, routing={"default": {"strategy": "session"},
                                                 "scrape_interval_s": QUIET_SCRAPES})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        await scraped_once(http, gateway, 3)
        for _ in range(5):
            await http.post("/v1/chat/completions", json=chat("hi"),
                            headers={"x-session-id": "alice"})
        alice = requests_by_engine((await http.get("/metrics")).text, 3)
        for _ in range(5):
            await http.post("/v1/chat/completions", json=chat("hi", user="bob"))
        both = requests_by_engine((await http.get("/metrics")).text, 3)
        for i in range(30):
            await http.post("/v1/chat/completions", json=chat("hi", user=f"user-{i}"))
        metrics = (await http.get("/metrics")).text
    assert sorted(alice) == [0, 0, 5]
    bob = [b - a for a, b in zip(alice, both, strict=True)]
    assert sorted(bob) == [0, 0, 5]
    assert all(n > 0 for n in requests_by_engine(metrics, 3))  # many keys spread out
    assert metric(metrics, 'sluice_routing_decisions_total{model="sim-model",'
                           'reason="session_sticky",strategy="session",version="none"}') == 40


async def test_prefix_affinity_sends_a_conversation_back_to_its_cache(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sims = [await start_sim(QUICK) for _ in range(3)]
    gateway = await start_gateway(sims, routing={"default": {"strategy": "prefix"},
                                                 "scrape_interval_s": QUIET_SCRAPES})
    # Five conversations on three engines: rotation alone would send each conversation's
    # next turn to another engine than its first.
    conversations = [f"conversation {c}: " + " ".join(f"w{c}x{i}" for i in range(60))
                     for c in range(5)]
    owners_by_turn: list[list[int]] = []
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        await scraped_once(http, gateway, 3)
        for turn in range(3):
            owners = []
            for text in conversations:
                hits_before = [await sim_prefix_hits(http, sim) for sim in sims]
                owner = await served_by(http, sims, "/v1/chat/completions",
                                        chat(text + f" turn {turn} " * (turn + 1)))
                hits_after = [await sim_prefix_hits(http, sim) for sim in sims]
                if turn:  # the engine found the conversation so far in its own cache
                    assert hits_after[owner] > hits_before[owner], (turn, text[:16])
                owners.append(owner)
            owners_by_turn.append(owners)
        metrics = (await http.get("/metrics")).text
        sim_hits = []
        for sim in sims:
            page = (await http.get(sim + "/metrics")).text
            sim_hits.append((metric(page, "vllm:prefix_cache_hits_total"),
                             metric(page, "vllm:prefix_cache_queries_total")))
    first_owners = owners_by_turn[0]
    assert owners_by_turn[1:] == [first_owners, first_owners]
    assert len(set(first_owners)) == 3  # new conversations were spread over the engines
    assert metric(metrics, 'sluice_routing_decisions_total{model="sim-model",'
                           'reason="prefix_hit",strategy="prefix",version="none"}') == 10
    hits, queries = sum(h for h, _ in sim_hits), sum(q for _, q in sim_hits)
    assert hits / queries > 0.5  # turns 2 and 3 found their history cached


async def test_least_loaded_counts_requests_other_gateways_sent(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    busy = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=20))
    idle = await start_sim(QUICK)
    gateway = await start_gateway(
        [busy, idle], routing={"default": {"strategy": "least_loaded",
                                           "scorers": {"least_loaded": 1.0}},
                               "scrape_interval_s": 0.05})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        # Requests sent straight to one engine, as another gateway replica would.
        direct = [asyncio.create_task(http.post(busy + "/v1/chat/completions",
                                                json=chat("elsewhere", max_tokens=1000)))
                  for _ in range(3)]
        try:
            async def scraped() -> bool:
                return await gateway_metric(
                    http, gateway, 'sluice_engine_requests{engine="e0",state="running"}') == 3
            await wait_until(scraped, "the gateway to scrape the busy engine's load")
            served = [await served_by(http, [busy, idle], "/v1/chat/completions", chat("hi"))
                      for _ in range(4)]
        finally:
            for task in direct:
                task.cancel()
            await asyncio.gather(*direct, return_exceptions=True)
    assert served == [1, 1, 1, 1]  # the gateway's own count says both engines are idle


async def test_load_scrape_feeds_the_engine_gauges(start_sim: StartSim,
                                                   start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=30))
    gateway = await start_gateway([sim], routing={"scrape_interval_s": 0.05})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        stream = {**chat("hi"), "stream": True, "max_tokens": 40}
        async with http.stream("POST", "/v1/chat/completions", json=stream):
            await asyncio.sleep(0.3)
            metrics = (await http.get("/metrics")).text
            ready = (await http.get("/ready")).json()
    assert 'sluice_engine_requests{engine="e0",state="running"} 1.0' in metrics
    assert ready["engines"][0]["load"] == 1
    assert ready["engines"][0]["circuit"] == "closed"
