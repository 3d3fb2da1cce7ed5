"""The rollout guard's bounds, and the tallies it reads."""

from __future__ import annotations

import math
import time

import pytest

from gateway.pipeline.context import CHAT, RequestContext
from gateway.stores.memory import MemoryMeasurements, MemoryVersionPolicies
from gateway.versions import VersionRouter, VersionsSettings
from gateway.versions.config import RolloutSettings
from gateway.versions.rollout import Rollouts
from gateway.versions.service import VersionService
from gateway.versions.stats import Tally, VersionMeasure, VersionStats

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


async def test_the_measure_hook_counts_errors_ttfts_and_not_client_disconnects() -> None:
    measurements = MemoryMeasurements()
    hook = VersionMeasure(measurements).record
    began = time.time()
    for status, left, ttft in (("200", False, 0.25), ("502", False, None),
                               ("503", False, 0.5), ("499", True, 0.25), ("400", False, 0.25)):
        ctx = RequestContext.new("r", CHAT, {"model": "chat"})
        ctx.version, ctx.outcome.status, ctx.outcome.client_left = "v2", status, left
        if ttft is not None:
            ctx.timings.first_byte = ctx.timings.arrived + ttft
        await hook(ctx)
    unversioned = RequestContext.new("r", CHAT, {"model": "other"})
    await hook(unversioned)
    window = await measurements.window("chat", "v2", math.floor(began), math.floor(began) + 2)
    assert (window.requests, window.errors, window.ttft_samples) == (4, 2, 3)
    assert window.ttft_p50_s == pytest.approx(0.25, rel=0.15)
    assert (await measurements.window("other", "v2", 0, 2 * 10**9)).requests == 0
