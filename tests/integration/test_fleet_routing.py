"""Routing strategies through a live gateway and several simulator engines."""

from __future__ import annotations

import asyncio

import httpx

from simulator import SimConfig
from tests.integration.test_fleet_failover import metric

QUICK = SimConfig(prefill_base_ms=1, decode_step_ms=1)


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "sim-model", "max_tokens": 2,
            "messages": [{"role": "user", "content": text}], **extra}


def requests_by_engine(metrics: str, engines: int) -> list[float]:
    return [metric(metrics, f'sluice_requests_total{{endpoint="chat",engine="e{i}"')
            for i in range(engines)]


async def test_session_affinity_keeps_each_session_on_one_engine(start_sim,
                                                                 start_gateway) -> None:
    sims = [await start_sim(QUICK) for _ in range(3)]
    gateway = await start_gateway(sims, routing={"default": {"strategy": "session"}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
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
                           'reason="session_sticky",strategy="session"}') == 40


async def test_prefix_affinity_sends_a_conversation_back_to_its_cache(start_sim,
                                                                      start_gateway) -> None:
    sims = [await start_sim(QUICK) for _ in range(3)]
    gateway = await start_gateway(sims, routing={"default": {"strategy": "prefix"}})
    conversations = [f"conversation {c}: " + " ".join(f"w{c}x{i}" for i in range(60))
                     for c in range(6)]
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        for turn in range(3):
            before = requests_by_engine((await http.get("/metrics")).text, 3)
            owners = []
            for text in conversations:
                await http.post("/v1/chat/completions",
                                json=chat(text + f" turn {turn} " * (turn + 1)))
                after = requests_by_engine((await http.get("/metrics")).text, 3)
                owners.append(next(i for i in range(3) if after[i] > before[i]))
                before = after
            if turn == 0:
                first_owners = owners
            else:
                assert owners == first_owners
        metrics = (await http.get("/metrics")).text
        sim_hits = []
        for sim in sims:
            page = (await http.get(sim + "/metrics")).text
            sim_hits.append((metric(page, "vllm:prefix_cache_hits_total"),
                             metric(page, "vllm:prefix_cache_queries_total")))
    assert len(set(first_owners)) > 1  # new conversations were spread by load
    assert metric(metrics, 'sluice_routing_decisions_total{model="sim-model",'
                           'reason="prefix_hit",strategy="prefix"}') == 12
    hits, queries = sum(h for h, _ in sim_hits), sum(q for _, q in sim_hits)
    assert hits / queries > 0.5  # turns 2 and 3 found their history cached


async def test_load_scrape_feeds_the_engine_gauges(start_sim, start_gateway) -> None:
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
