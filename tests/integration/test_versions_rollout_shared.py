"""Guarded rollouts across two ``sluice serve`` processes on one redis-server: the
gateway running a rollout judges the requests the other one served; either answers for
the rollout and its decisions; a rollout whose gateway is killed is taken over by the
other and finished; a cancel through the other stops it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
from typer.testing import CliRunner

from gateway.cli.main import app
from simulator import SimConfig
from tests.integration.conftest import ServeGateway
from tests.integration.helpers import gateway_metric, wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY
from tests.integration.test_versions_rollout import traffic
from tests.redis_server import RedisServer

BOUNDS: dict[str, Any] = {"min_requests": 5, "check_interval_s": 0.1, "max_error_rate": 0.2}
"""Checked every 100 ms: a rollout's lease lapses 300 ms after its gateway dies."""


async def two_gateways(serve_gateway: ServeGateway, redis: RedisServer, sims: list[str],
                       **bounds: Any) -> tuple[str, str]:
    settings = {"admin": {"token": ADMIN_TOKEN}, "api_keys": [STATIC_KEY],
                "redis": {"probe_interval_s": 0.2, "measure_flush_s": 0.1},
                "versions": {"rollout": {**BOUNDS, **bounds}, "aliases": {"chat": {
                    "versions": {n: {"model": m} for n, m in MODELS.items()},
                    "weights": {"v1": 1}}}}}
    first = await serve_gateway(sims, redis.url, **settings)
    return first, await serve_gateway(sims, redis.url, **settings)


async def rollout(http: httpx.AsyncClient, gateway: str) -> dict[str, Any]:
    response = await http.get(gateway + "/admin/versions/chat/rollout")
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


async def until_ended(http: httpx.AsyncClient, gateway: str) -> dict[str, Any]:
    async def ended() -> bool:
        return (await rollout(http, gateway))["state"] != "running"

    await wait_until(ended, "the rollout to end", timeout_s=60)
    return await rollout(http, gateway)


def pid_of(owner: str) -> int:
    """A replica id starts with its process id."""
    return int(owner.split("-")[0])


async def test_a_rollout_judges_what_the_other_gateway_served(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway,
        gateway_processes: dict[str, subprocess.Popen[bytes]]) -> None:
    sims = [await start_sim(SimConfig(model=MODELS["v1"], prefill_base_ms=10,
                                      decode_step_ms=1)),
            await start_sim(SimConfig(model=MODELS["v2"], prefill_base_ms=200,
                                      decode_step_ms=1))]  # v2: 20x slower to a first token
    a, b = await two_gateways(serve_gateway, redis_server, sims, max_ttft_p99_ratio=1.5,
                              ttft_p99_slack_s=0.02)
    async with traffic(b) as statuses, httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        started = await http.post(a + "/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 50, 100], "hold_s": 60})
        assert started.status_code == 202, started.text
        on_b = await until_ended(http, b)
        on_a = await rollout(http, a)
        served_by_a = await gateway_metric(http, a, "sluice_requests_total{")
        applied = [(await http.get(g + "/admin/versions/chat")).json()["applied"]["weights"]
                   for g in (a, b)]
    status = await asyncio.to_thread(CliRunner().invoke, app, [
        "versions", "rollout-status", "chat", "--url", b, "--token", ADMIN_TOKEN])

    assert served_by_a == 0  # every request went through b
    assert statuses
    assert on_b == on_a  # either gateway answers from the store
    assert pid_of(on_b["owner"]) == gateway_processes[a].pid  # a drove it
    assert on_b["state"] == "rolled_back"
    breach, rollback = on_b["decisions"][-2:]
    assert (breach["action"], rollback["action"]) == ("breach", "rollback")
    assert breach["step"] == 0  # within the first hold of 60 s
    assert "TTFT p99" in breach["reason"]
    assert breach["new"]["requests"] >= 5
    assert breach["new"]["ttft_p99_s"] > 3 * breach["base"]["ttft_p99_s"]
    assert breach["base"]["requests"] >= 5
    assert applied == [{"v1": 1}, {"v1": 1}]
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["decisions"] == on_b["decisions"]


async def test_the_other_gateway_takes_over_a_rollout_whose_gateway_died(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway,
        gateway_processes: dict[str, subprocess.Popen[bytes]]) -> None:
    sims = [await start_sim(SimConfig(model=m, prefill_base_ms=1, decode_step_ms=1))
            for m in MODELS.values()]
    a, b = await two_gateways(serve_gateway, redis_server, sims, max_ttft_p99_ratio=20)
    async with traffic(b) as statuses, httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        started = await http.post(a + "/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 50, 100], "hold_s": 1.0})
        assert started.status_code == 202, started.text

        async def promoted_once() -> bool:
            return (await rollout(http, b))["step"] >= 1

        await wait_until(promoted_once, "the first promotion")
        gateway_processes[a].kill()  # as a crash: no lease given back
        gateway_processes[a].wait(timeout=10)
        done = await until_ended(http, b)
        applied = (await http.get(b + "/admin/versions/chat")).json()["applied"]["weights"]

    assert done["state"] == "done"
    assert pid_of(done["owner"]) == gateway_processes[b].pid
    actions = [d["action"] for d in done["decisions"] if d["action"] != "extend"]
    assert actions.count("resume") == 1
    resumed = next(d for d in done["decisions"] if d["action"] == "resume")
    assert resumed["step"] >= 1
    assert f"from {gateway_processes[a].pid}-" in resumed["reason"]
    actions.remove("resume")
    assert actions == ["step", "promote"] * 3 + ["done"]  # no step run twice
    assert applied == {"v2": 100}
    assert set(statuses) == {200}


async def test_a_rollout_is_cancelled_through_the_other_gateway(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway) -> None:
    sims = [await start_sim(SimConfig(model=m, prefill_base_ms=1, decode_step_ms=1))
            for m in MODELS.values()]
    a, b = await two_gateways(serve_gateway, redis_server, sims, max_ttft_p99_ratio=20)
    plan = {"to": "v2", "steps": [10, 100], "hold_s": 60}
    async with traffic(b), httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        assert (await http.post(a + "/admin/versions/chat/rollout", json=plan)
                ).status_code == 202

        async def split_applied() -> bool:
            shown = (await http.get(a + "/admin/versions/chat")).json()
            return bool(shown["applied"]["weights"] == {"v1": 90, "v2": 10})

        await wait_until(split_applied, "the first split")
        again = await http.post(b + "/admin/versions/chat/rollout", json=plan)
        cancelled = await http.delete(b + "/admin/versions/chat/rollout")
        shown = await rollout(http, a)
        applied = (await http.get(a + "/admin/versions/chat")).json()["applied"]["weights"]
        after = await http.post(b + "/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [100], "hold_s": 0.3})
        finished = await until_ended(http, a)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "rollout_running"
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert shown["state"] == "cancelled"
    assert shown["decisions"][-1]["action"] == "cancelled"
    assert applied == {"v1": 90, "v2": 10}  # left where it was
    assert after.status_code == 202, after.text
    assert finished["state"] == "done"


PINNED = {**KEY, "x-sluice-version": "v2"}
"""A caller's requests pinned to v2."""


async def test_pinned_cheap_calls_cannot_force_a_failing_version_through(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway) -> None:
    fast = {"prefill_base_ms": 1, "decode_step_ms": 1}
    sims = [await start_sim(SimConfig(model=MODELS["v1"], **fast)),
            await start_sim(SimConfig(model=MODELS["v2"], error_rate=0.5, **fast))]
    a, b = await two_gateways(serve_gateway, redis_server, sims, max_ttft_p99_ratio=20,
                              max_error_rate=0.3)
    tokenize = {"model": "chat", "prompt": "hi"}
    async with traffic(a, 8, path="/tokenize", body=tokenize, headers=PINNED) as flood, \
            traffic(b, clients=1) as statuses, \
            httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        started = await http.post(a + "/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 50, 100], "hold_s": 2})
        assert started.status_code == 202, started.text
        ended = await until_ended(http, b)
    assert ended["state"] == "rolled_back", ended["decisions"][-1]
    assert len(flood) > 20  # the flood ran, and v2 answered it
    assert set(flood) == {200}
    assert 502 in statuses or 500 in statuses  # v2 failed ordinary requests
    assert "error rate" in ended["decisions"][-1]["reason"]


async def test_pinned_slow_requests_cannot_roll_a_healthy_version_back(
        redis_server: RedisServer, start_sim, serve_gateway: ServeGateway) -> None:
    fast = {"prefill_base_ms": 1, "decode_step_ms": 1}
    sims = [await start_sim(SimConfig(model=m, **fast)) for m in MODELS.values()]
    a, b = await two_gateways(serve_gateway, redis_server, sims, max_ttft_p99_ratio=1.5,
                              ttft_p99_slack_s=0.05)
    slow = {**BODY, "max_tokens": 300, "ignore_eos": True}  # whole answer ~300 ms: its TTFT
    async with traffic(a, 3, body=slow, headers=PINNED) as flood, traffic(b), \
            httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        started = await http.post(a + "/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 100], "hold_s": 2})
        assert started.status_code == 202, started.text
        ended = await until_ended(http, b)
    assert ended["state"] == "done", ended["decisions"][-1]
    assert len(flood) > 10
    assert set(flood) == {200}
