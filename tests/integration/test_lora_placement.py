"""Registered LoRA adapters loaded on demand through a gateway onto simulator engines:
within each engine's adapter bound, never unloading one in use, and never loading one
an engine holds (also with two gateways on one redis-server)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
from click.testing import Result
from typer.testing import CliRunner

from gateway.cli.main import app
from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import ServeGateway, StartSim
from tests.integration.helpers import metric, wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, KEY, STATIC_KEY
from tests.redis_server import RedisServer

ADAPTERS = [{"name": f"lora-{i}", "base": "sim-model", "path": f"/adapters/lora-{i}"}
            for i in range(3)]
"""Three adapters on the simulator's base model (the simulator takes any path)."""
TIGHT = SimConfig(prefill_base_ms=2, decode_step_ms=5, max_loras=1, lora_load_ms=30)
"""An engine that holds one adapter at a time and takes 30 ms to load one."""


async def round_robin(gateways: list[str], requests: int, concurrency: int
                      ) -> list[tuple[str, int, str]]:
    """``requests`` chat requests naming the adapters in turn, ``concurrency`` at once,
    spread over ``gateways``: (adapter asked, status, model answered)."""
    names = itertools.cycle(a["name"] for a in ADAPTERS)
    targets = itertools.cycle(gateways)
    jobs = [(next(names), next(targets)) for _ in range(requests)]
    results: list[tuple[str, int, str]] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(http: httpx.AsyncClient, adapter: str, gateway: str) -> None:
        async with limit:
            response = await http.post(gateway + "/v1/chat/completions", json={
                "model": adapter, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8})
            body = response.json()
            results.append((adapter, response.status_code, body.get("model", body)))

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(one(http, adapter, gateway) for adapter, gateway in jobs))
    return results


async def lora_calls(sim: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        calls: dict[str, Any] = (await http.get(sim + "/sim/lora")).json()
    return calls


async def test_adapters_load_on_demand_within_a_bound_of_one(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(TIGHT)
    gateway = await start_gateway([sim], adapters=ADAPTERS)
    async with httpx.AsyncClient() as http:
        listed = {m["id"]: m for m in (await http.get(gateway + "/v1/models")).json()["data"]}
    assert {a["name"]: listed[a["name"]]["parent"] for a in ADAPTERS} == {
        a["name"]: "sim-model" for a in ADAPTERS}  # listed before any was loaded

    results = await round_robin([gateway], requests=30, concurrency=6)

    assert [status for _, status, _ in results] == [200] * 30, results
    assert all(asked == answered for asked, _, answered in results)
    calls = await lora_calls(sim)
    assert calls.get("unloaded_busy", 0) == 0  # never one with requests on it
    assert calls.get("already_loaded", 0) == 0  # never one it held
    assert len(calls["loaded"]) == 1  # within the bound
    async with httpx.AsyncClient() as http:
        page = (await http.get(gateway + "/metrics")).text
    assert metric(page, 'sluice_adapter_loads_total{engine="e0",outcome="loaded"}') == \
        calls["loads"] >= 3
    assert metric(page, 'sluice_adapter_unloads_total{engine="e0"}') == calls["unloads"] >= 2


async def test_two_gateways_on_one_redis_never_load_an_adapter_twice_on_an_engine(
        start_sim: StartSim, serve_gateway: ServeGateway, redis_server: RedisServer) -> None:
    sims = [await start_sim(TIGHT), await start_sim(TIGHT)]
    a = await serve_gateway(sims, redis_server.url, adapters=ADAPTERS)
    b = await serve_gateway(sims, redis_server.url, adapters=ADAPTERS)

    results = await round_robin([a, b], requests=40, concurrency=8)

    assert [status for _, status, _ in results] == [200] * 40, results
    assert all(asked == answered for asked, _, answered in results)
    for sim in sims:
        calls = await lora_calls(sim)
        assert calls.get("already_loaded", 0) == 0, calls
        assert calls.get("unloaded_busy", 0) == 0, calls
        assert len(calls["loaded"]) <= 1


async def test_an_adapter_no_engine_can_load_is_an_error_naming_it(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=2, decode_step_ms=2, max_loras=0))
    gateway = await start_gateway([sim], adapters=ADAPTERS)
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway + "/v1/chat/completions", json={
            "model": "lora-0", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert "lora-0" in response.json()["error"]["message"]


async def test_adapters_registered_through_one_gateway_are_served_by_the_other(
        start_sim: StartSim, serve_gateway: ServeGateway, redis_server: RedisServer) -> None:
    sim = await start_sim(TIGHT)
    settings = {"admin": {"token": ADMIN_TOKEN}, "api_keys": [STATIC_KEY],
                "adapters": ADAPTERS[:1],
                "lora": {"roots": ["/adapters"]}, "redis": {"probe_interval_s": 0.2}}
    a = await serve_gateway([sim], redis_server.url, **settings)
    b = await serve_gateway([sim], redis_server.url, **settings)
    cli = CliRunner()

    def sluice(*args: str) -> Result:
        return cli.invoke(app, ["adapters", *args, "--url", a, "--token", ADMIN_TOKEN])

    added = await asyncio.to_thread(sluice, "add", "lora-1", "--base", "sim-model",
                                    "--path", "/adapters/lora-1", "--rank", "8")
    assert added.exit_code == 0, added.output
    async with httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        outside = await http.post(a + "/admin/adapters", json={
            "name": "evil", "base": "sim-model", "path": "/etc/evil"})
        configured = await http.delete(a + "/admin/adapters/lora-0")
        listed = (await http.get(b + "/admin/adapters")).json()["data"]
        served = await http.post(b + "/v1/chat/completions", headers=KEY, json={
            "model": "lora-1", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4})
    listing = await asyncio.to_thread(sluice, "list")

    assert (outside.status_code, outside.json()["error"]["code"]) == (400, "path_not_allowed")
    assert (configured.status_code, configured.json()["error"]["code"]) == (
        409, "adapter_configured")
    assert {(s["name"], s["source"]) for s in listed} == {("lora-0", "config"),
                                                        ("lora-1", "api")}
    assert served.status_code == 200, served.text
    assert served.json()["model"] == "lora-1"
    assert "lora-1" in listing.output
    assert "api" in listing.output

    removed = await asyncio.to_thread(sluice, "remove", "lora-1")
    assert removed.exit_code == 0, removed.output

    async def unloaded() -> bool:
        return "lora-1" not in (await lora_calls(sim))["loaded"]

    await wait_until(unloaded, "the removed adapter to be unloaded")
    async with httpx.AsyncClient(timeout=30) as http:
        gone = await http.post(b + "/v1/chat/completions", headers=KEY, json={
            "model": "lora-1", "messages": [{"role": "user", "content": "hi"}]})
    assert gone.status_code == 404
