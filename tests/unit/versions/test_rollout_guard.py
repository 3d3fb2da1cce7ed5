"""The rollout guard's bounds, and the tallies it reads."""

from __future__ import annotations

from gateway.pipeline.context import CHAT, RequestContext
from gateway.stores.memory import MemoryVersionPolicies
from gateway.versions import VersionRouter, VersionsSettings
from gateway.versions.config import RolloutSettings
from gateway.versions.rollout import Rollouts
from gateway.versions.service import VersionService
from gateway.versions.stats import Tally, VersionStats

BOUNDS = RolloutSettings(max_error_rate=0.1, max_latency_ratio=2, min_requests=10)


def rollouts() -> Rollouts:
    router = VersionRouter(VersionsSettings(), MemoryVersionPolicies(), lambda _: True)
    return Rollouts(VersionService(router), router, VersionStats(), BOUNDS)


def test_the_bounds() -> None:
    guard = rollouts()._breach
    assert guard(Tally(9, 9, 9.0), Tally()) is None  # too few to judge
    assert guard(Tally(10, 1, 1.0), Tally()) is None
    assert "error rate" in str(guard(Tally(10, 2, 1.0), Tally()))
    assert "latency" in str(guard(Tally(10, 0, 30.0), Tally(10, 0, 10.0)))
    assert guard(Tally(10, 0, 30.0), Tally(5, 0, 1.0)) is None  # base too thin to compare


async def test_tallies_count_server_errors_and_not_client_disconnects() -> None:
    stats = VersionStats()
    for status, left in (("200", False), ("502", False), ("499", True), ("400", False)):
        ctx = RequestContext.new("r", CHAT, {"model": "chat"})
        ctx.version, ctx.outcome.status, ctx.outcome.client_left = "v2", status, left
        ctx.timings.finished = ctx.timings.arrived + 0.5
        await stats.record(ctx)
    tally = stats.get("chat", "v2")
    assert (tally.requests, tally.errors, tally.latency_s) == (3, 1, 1.5)
    assert stats.get("chat", "v1") == Tally()
