"""Guarded progressive rollouts through a gateway and two simulators, under load: a
healthy version is promoted step by step to all the traffic (driven by the CLI), a
failing one is rolled back at once, and every decision is in the admin API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from typer.testing import CliRunner

from gateway.cli.main import app
from simulator import SimConfig
from tests.integration.helpers import wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY

FAST: dict[str, Any] = {"prefill_base_ms": 1, "decode_step_ms": 1}
BOUNDS = {"min_requests": 5, "check_interval_s": 0.05, "max_error_rate": 0.2,
          "max_ttft_p99_ratio": 20, "ttft_p99_slack_s": 2.0}
"""These tests judge by errors (the TTFT guard is tested in test_versions_rollout_shared.py):
p99 over a few requests in a 300 ms step is their slowest one, and one pause of the
test's own process (all of it runs in one event loop) once rolled a healthy version back
at 446 ms against a 230 ms bound."""


async def rollout_gateway(start_sim, start_gateway, new: SimConfig) -> str:
    sims = [await start_sim(SimConfig(model=MODELS["v1"], **FAST)), await start_sim(new)]
    return await start_gateway(
        sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
        versions={"rollout": BOUNDS, "aliases": {"chat": {"versions": {
            name: {"model": m} for name, m in MODELS.items()}, "weights": {"v1": 1}}}})


@contextlib.asynccontextmanager
async def traffic(gateway: str, clients: int = 4, *, path: str = "/v1/chat/completions",
                  body: dict[str, Any] = BODY, headers: dict[str, str] = KEY
                  ) -> AsyncIterator[list[int]]:
    """Requests (by default chat to the alias) in ``clients`` loops until the block
    ends; their statuses."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def loop(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            statuses.append((await http.post(path, json=body)).status_code)

    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=headers) as http:
        tasks = [asyncio.create_task(loop(http)) for _ in range(clients)]
        try:
            yield statuses
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def rollout_state(http: httpx.AsyncClient) -> dict[str, Any]:
    state: dict[str, Any] = (await http.get("/admin/versions/chat/rollout")).json()
    return state


async def test_a_healthy_version_is_promoted_step_by_step(start_sim, start_gateway) -> None:
    gateway = await rollout_gateway(start_sim, start_gateway,
                                    SimConfig(model=MODELS["v2"], **FAST))
    async with traffic(gateway) as statuses:
        result = await asyncio.to_thread(CliRunner().invoke, app, [
            "versions", "rollout", "chat", "--to", "v2", "--steps", "10,50,100",
            "--hold", "300ms", "--watch", "--url", gateway, "--token", ADMIN_TOKEN])
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=ADMIN) as http:
        state = await rollout_state(http)
        shown = (await http.get("/admin/versions/chat")).json()
    assert result.exit_code == 0, result.output
    assert "rollout done" in result.output
    assert state["state"] == "done"
    actions = [d["action"] for d in state["decisions"] if d["action"] != "extend"]
    assert actions == ["step", "promote"] * 3 + ["done"]
    assert all(d["new"]["errors"] == 0 for d in state["decisions"] if d["action"] == "promote")
    assert shown["applied"]["weights"] == {"v2": 100}
    assert set(statuses) == {200}


async def test_a_failing_version_is_rolled_back_at_once(start_sim, start_gateway) -> None:
    gateway = await rollout_gateway(start_sim, start_gateway,
                                    SimConfig(model=MODELS["v2"], error_rate=1.0, **FAST))
    async with traffic(gateway), httpx.AsyncClient(
            base_url=gateway, timeout=30, headers=ADMIN) as http:
        started = await http.post("/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 50, 100], "hold_s": 60})
        again = await http.post("/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [100], "hold_s": 1})

        async def ended() -> bool:
            return (await rollout_state(http))["state"] != "running"

        await wait_until(ended, "the rollout to end")
        state = await rollout_state(http)
        shown = (await http.get("/admin/versions/chat")).json()
    assert started.status_code == 202, started.text
    assert again.status_code == 409
    assert state["state"] == "rolled_back"
    step, *_, rollback = state["decisions"]
    assert rollback["action"] == "rollback"
    assert "error rate" in rollback["reason"]
    assert rollback["step"] == 0  # within the first hold of 60 s: at once
    print(f"rolled back {rollback['at'] - step['at']:.2f} s after the 10 % step")
    assert shown["applied"]["weights"] == {"v1": 1}


async def test_bad_rollout_plans_are_refused(start_sim, start_gateway) -> None:
    gateway = await rollout_gateway(start_sim, start_gateway,
                                    SimConfig(model=MODELS["v2"], **FAST))
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=ADMIN) as http:
        plans = [{"to": "v9", "steps": [100], "hold_s": 1},
                 {"to": "v2", "steps": [50, 10, 100], "hold_s": 1},
                 {"to": "v2", "steps": [10, 50], "hold_s": 1},
                 {"to": "v1", "steps": [100], "hold_s": 1},
                 {"to": "v2", "steps": [100], "hold_s": 4801}]  # 3 holds > 4 h kept
        refused = [(await http.post("/admin/versions/chat/rollout", json=p)).status_code
                   for p in plans]
        none = await http.get("/admin/versions/chat/rollout")
        unauthorized = await http.post("/admin/versions/chat/rollout", headers=KEY,
                                       json={"to": "v2", "steps": [100], "hold_s": 1})
    assert refused == [400] * 5
    assert none.status_code == 404
    assert unauthorized.status_code == 401


async def test_a_policy_changed_during_a_rollout_stops_it(start_sim, start_gateway) -> None:
    gateway = await rollout_gateway(start_sim, start_gateway,
                                    SimConfig(model=MODELS["v2"], **FAST))
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=ADMIN) as http:
        await http.post("/admin/versions/chat/rollout", json={
            "to": "v2", "steps": [10, 100], "hold_s": 60})
        await http.put("/admin/versions/chat", json={"weights": {"v1": 1}})

        async def ended() -> bool:
            return (await rollout_state(http))["state"] != "running"

        await wait_until(ended, "the rollout to stop")
        state = await rollout_state(http)
        shown = (await http.get("/admin/versions/chat")).json()
    assert state["state"] == "superseded"
    assert state["decisions"][-1]["action"] == "superseded"
    assert shown["applied"]["weights"] == {"v1": 1}
