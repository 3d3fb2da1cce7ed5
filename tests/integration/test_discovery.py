"""Engines found in DNS: a test DNS server (UDP, on a free port) lists simulators by SRV
records; the gateway process adds and drains them as the records change, under
continuous streaming load, with no failed request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from simulator import SimConfig
from tests.dns_server import DnsServer
from tests.integration.helpers import gateway_metric, sim_received, wait_until
from tests.integration.lifecycle import Load, start_gateway, stop

SRV = "_vllm._tcp.engines.test."
ERRORS = 'sluice_discovery_resolutions_total{outcome="error",source="fleet"}'


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    yield server
    server.close()


def list_engines(dns: DnsServer, *sims: str) -> None:
    """The SRV records name ``sims`` (base URLs on 127.0.0.1), with their addresses."""
    records = []
    for index, sim in enumerate(sims):
        port = sim.rsplit(":", 1)[1]
        records.append(f"0 0 {port} sim{index}.engines.test.")
        dns.records[(f"sim{index}.engines.test.", "A")] = ["127.0.0.1"]
    dns.records[(SRV, "SRV")] = records


def engine_name(sim: str) -> str:
    return f"fleet-127.0.0.1-{sim.rsplit(':', 1)[1]}"


async def routable(http: httpx.AsyncClient, url: str) -> set[str]:
    engines = (await http.get(url + "/ready")).json()["engines"]
    return {e["name"] for e in engines if e["healthy"]}


async def test_engines_join_and_leave_with_their_dns_records_under_load(
        start_sim, dns: DnsServer, tmp_path: Path) -> None:
    config = SimConfig(prefill_base_ms=2, decode_step_ms=15)  # ~120 ms streams
    first, second = await start_sim(config), await start_sim(config)
    list_engines(dns, first)
    gateway = await start_gateway(tmp_path, {
        "health_interval_s": 0.2,
        "discovery": [{"name": "fleet", "dns_name": SRV, "record": "SRV", "interval_s": 0.2,
                       "timeout_s": 1, "nameservers": [dns.address]}]})
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            assert await routable(http, gateway.url) == {engine_name(first)}
            load = Load(gateway.url).start()
            await load.wait_for(10)
            list_engines(dns, first, second)  # a new engine: it joins

            async def second_serves() -> bool:
                return await sim_received(http, second) > 0

            await wait_until(second_serves, "the new engine to take requests")
            list_engines(dns, second)  # the first one's record goes: it is drained

            async def first_gone() -> bool:
                return await routable(http, gateway.url) == {engine_name(second)}

            await wait_until(first_gone, "the first engine to leave")
            await load.wait_for(5)  # whatever the first one had in flight has ended
            taken = await sim_received(http, first)
            await load.wait_for(20)
            await load.stop()
            assert await sim_received(http, first) == taken, "no new request went to it"
            assert load.failures == []
            page = (await http.get(gateway.url + "/metrics")).text
            gauges = [line for line in page.splitlines() if engine_name(first) in line
                      and line.startswith(("sluice_engine_", "sluice_circuit_state"))]
            assert gauges == [], "its gauges went with it (counters stay, as counters do)"
            assert 'sluice_discovery_engines{source="fleet"} 1.0' in page.splitlines()
    finally:
        stop(gateway)


async def test_a_dns_outage_keeps_the_engines_found_last(
        start_sim, dns: DnsServer, tmp_path: Path) -> None:
    sim = await start_sim()
    list_engines(dns, sim)
    gateway = await start_gateway(tmp_path, {
        "discovery": [{"name": "fleet", "dns_name": SRV, "record": "SRV", "interval_s": 0.1,
                       "timeout_s": 0.2, "nameservers": [dns.address]}]})
    try:
        dns.silent = True
        async with httpx.AsyncClient(timeout=5) as http:
            async def failed_twice() -> bool:
                return await gateway_metric(http, gateway.url, ERRORS) >= 2
            await wait_until(failed_twice, "two failed resolutions")
            assert await routable(http, gateway.url) == {engine_name(sim)}
            reply = await http.post(gateway.url + "/v1/chat/completions", json={
                "model": "sim-model", "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200
        assert "keeping its 1 engines" in gateway.logged()
    finally:
        stop(gateway)
