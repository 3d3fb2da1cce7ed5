"""Configuration reload on SIGHUP, in a real ``sluice serve`` process: a routing weight
changed under streaming load (no stream dropped), a bad config refused with one log
line per error while the old one keeps serving, restart-only changes named, and the
signal forwarded to every worker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from simulator import SimConfig
from tests.integration.helpers import events_of, sim_received, wait_until
from tests.integration.lifecycle import STREAM, Gateway, Load, start_gateway, stop

ROUND_ROBIN = {"default": {"scorers": {"round_robin": 1}}}
BY_SESSION = {"default": {"scorers": {"session": 4, "round_robin": 0.1}}}


def fleet(a: str, b: str, **more: Any) -> dict[str, Any]:
    return {"engines": [{"name": "e0", "url": a}, {"name": "e1", "url": b}], **more}


async def reloaded(gateway: Gateway, outcome: str, count: int) -> None:
    async def done() -> bool:
        return await gateway.reloads(outcome) >= count
    await wait_until(done, f"{count} reload(s) {outcome}")


async def spread(http: httpx.AsyncClient, gateway: Gateway, sims: list[str],
                 requests: int) -> list[int]:
    """Send ``requests`` streams one after another (session ``s``); each sim's share."""
    before = [await sim_received(http, sim) for sim in sims]
    for _ in range(requests):
        reply = await http.post(gateway.url + "/v1/chat/completions", json=STREAM,
                                headers={"x-session-id": "s"})
        assert reply.status_code == 200
    return [await sim_received(http, sim) - was for sim, was in zip(sims, before, strict=True)]


async def test_a_reload_changes_a_routing_weight_under_load(start_sim, tmp_path: Path) -> None:
    sims = [await start_sim(SimConfig(prefill_base_ms=2, decode_step_ms=15))
            for _ in range(2)]
    gateway = await start_gateway(tmp_path, fleet(*sims, routing=ROUND_ROBIN))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            assert await spread(http, gateway, sims, 6) == [3, 3], "round robin"
            load = Load(gateway.url, concurrency=3, headers={"x-session-id": "s"}).start()
            long = asyncio.create_task(http.post(
                gateway.url + "/v1/chat/completions",
                json={**STREAM, "max_tokens": 80}))  # ~1.2 s, across the reload
            await load.wait_for(5)
            gateway.write({"port": int(gateway.url.rsplit(":", 1)[1]),
                           "default_engine": False, "access_log": False,
                           **fleet(*sims, routing=BY_SESSION)})
            gateway.hangup()
            await reloaded(gateway, "applied", 1)
            await load.wait_for(10)
            await load.stop()
            events = events_of((await long).content)
            assert events[-1] == "data: [DONE]"
            assert not [e for e in events if '"error"' in e]
            assert load.failures == []
            shares = await spread(http, gateway, sims, 6)
            assert sorted(shares) == [0, 6], "one session, one engine: the new weights"
        assert "config reloaded" in gateway.logged()
    finally:
        stop(gateway)


async def test_a_bad_reload_is_refused_and_the_old_config_serves(
        start_sim, tmp_path: Path) -> None:
    sims = [await start_sim() for _ in range(2)]
    gateway = await start_gateway(tmp_path, fleet(*sims, routing=ROUND_ROBIN))
    port = int(gateway.url.rsplit(":", 1)[1])
    base = {"port": port, "default_engine": False, "access_log": False}
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            gateway.write({**base, **fleet(*sims, routing=BY_SESSION,
                                           admission={"max_in_flight_per_engine": 0},
                                           discovery=[{"name": "x", "dns_name": "y"}])})
            gateway.hangup()
            await reloaded(gateway, "refused", 1)
            log = gateway.logged()
            assert "config reload refused: admission.max_in_flight_per_engine:" in log
            assert "config reload refused: discovery.0: Value error, discovery 'x': " \
                   "record A needs a port" in log
            gateway.write({**base, **fleet(*sims, routing={
                "profiles": {"p": {"scorers": {"no_such_scorer": 1}}},
                "default": {"profile": "p"}})})
            gateway.hangup()
            await reloaded(gateway, "refused", 2)
            assert "config reload refused: routing:" in gateway.logged()
            gateway.config.write_text("engines: [unclosed\n")
            gateway.hangup()
            await reloaded(gateway, "refused", 3)
            assert await spread(http, gateway, sims, 6) == [3, 3], "still round robin"
            gateway.write({**base, "port": port + 1, **fleet(sims[0], sims[1], routing=
                                                            ROUND_ROBIN)})
            gateway.hangup()
            await reloaded(gateway, "applied", 1)
            assert "not applied (needs a restart): port" in gateway.logged()
            assert (await http.get(gateway.url + "/ready")).status_code == 200
        assert gateway.process.poll() is None
    finally:
        stop(gateway)


async def test_the_supervisor_forwards_sighup_to_every_worker(
        start_sim, tmp_path: Path) -> None:
    first, second = await start_sim(), await start_sim()
    gateway = await start_gateway(tmp_path, {"workers": 2,
                                             "engines": [{"name": "e0", "url": first}]})
    try:
        settings = {"port": int(gateway.url.rsplit(":", 1)[1]), "default_engine": False,
                    "access_log": False, "workers": 2, "routing": ROUND_ROBIN,
                    **fleet(first, second)}
        gateway.write(settings)
        gateway.hangup()
        await wait_until(lambda: _logged(gateway, "config reloaded", 2),
                         "both workers to reload")
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(8):  # new connections: the kernel spreads them over workers
                async with httpx.AsyncClient(timeout=30) as one:
                    reply = await one.post(gateway.url + "/v1/chat/completions", json=STREAM)
                assert reply.status_code == 200
            assert await sim_received(http, second) >= 3
        assert gateway.process.poll() is None
    finally:
        stop(gateway)


async def _logged(gateway: Gateway, text: str, times: int) -> bool:
    return gateway.logged().count(text) >= times
