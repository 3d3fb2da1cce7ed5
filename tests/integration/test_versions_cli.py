"""``sluice versions`` against a real gateway: canary, promote, rollback, history, show,
and a wrong token."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from gateway.cli.main import app
from simulator import SimConfig
from tests.integration.test_versions import ADMIN_TOKEN, MODELS, STATIC_KEY, versions


async def test_the_versions_commands(start_sim, start_gateway) -> None:
    sims = [await start_sim(SimConfig(model=model)) for model in MODELS.values()]
    gateway = await start_gateway(sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
                                  versions=versions({"v1": 1}))
    runner = CliRunner()

    async def sluice(*args: str, token: str = ADMIN_TOKEN) -> tuple[int, str]:
        result = await asyncio.to_thread(
            runner.invoke, app, ["versions", *args, "--url", gateway, "--token", token])
        return result.exit_code, result.output

    code, canary = await sluice("canary", "chat", "v2", "10")
    assert code == 0, canary
    assert json.loads(canary)["applied"]["weights"] == {"v1": 90, "v2": 10}
    code, promoted = await sluice("promote", "chat", "v2")
    assert json.loads(promoted)["applied"]["weights"] == {"v2": 100}
    code, history = await sluice("history", "chat")
    assert [p["weights"] for p in json.loads(history)["data"]] == [
        {"v1": 90, "v2": 10}, {"v1": 1}]
    code, rolled = await sluice("rollback", "chat")
    assert json.loads(rolled)["applied"]["weights"] == {"v1": 90, "v2": 10}
    code, shown = await sluice("show", "chat")
    assert json.loads(shown)["policy"]["weights"] == {"v1": 90, "v2": 10}
    code, set_to = await sluice("set", "chat", "v1=50", "v2=50")
    assert json.loads(set_to)["policy"]["weights"] == {"v1": 50, "v2": 50}
    code, refused = await sluice("show", token="x" * 40)
    assert code == 1
    assert "401" in refused
    code, unknown = await sluice("set", "chat", "v9=1")
    assert code == 1
    assert "unknown version" in unknown
