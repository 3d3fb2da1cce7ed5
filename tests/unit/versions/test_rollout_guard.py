"""The rollout guard: its bounds over measurement windows (error rate, TTFT p99 against
the base's), whole rollouts judged over the in-memory stores, and the finish hook that
measures requests."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.versions import RolloutSettings
from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT
from gateway.observability.metrics import GatewayMetrics
from gateway.stores import Window
from gateway.stores.memory import MemoryMeasurements, MemoryRollouts, MemoryVersionPolicies
from gateway.stores.windows import Counts
from gateway.versions import VersionRouter, VersionsSettings
from gateway.versions.rollout import Rollouts, breach, public
from gateway.versions.service import VersionService
from gateway.versions.stats import VersionMeasure

BOUNDS = RolloutSettings(max_error_rate=0.1, max_ttft_p99_ratio=1.5, ttft_p99_slack_s=0.01,
                         min_requests=10)
ALIAS = {"versions": {"v1": {"model": "base-a"}, "v2": {"model": "base-b"}},
         "weights": {"v1": 1}}


def measured(requests: int, errors: int = 0, ttft_s: float = 0.1) -> Window:
    counts = Counts()
    for n in range(requests):
        counts.count(n < errors, None if n < errors else ttft_s)
    return Window.of([counts])


def test_the_bounds() -> None:
    base = measured(50, ttft_s=0.1)
    assert breach(BOUNDS, measured(9, 9), base) is None  # too few to judge
    assert breach(BOUNDS, measured(10, 1), base) is None
    assert "error rate" in str(breach(BOUNDS, measured(10, 2), base))
    assert "TTFT p99" in str(breach(BOUNDS, measured(20, ttft_s=0.3), base))  # 3x
    assert breach(BOUNDS, measured(20, ttft_s=0.14), base) is None  # 1.4x
    assert breach(BOUNDS, measured(20, ttft_s=0.3), measured(9)) is None  # thin base
    # A base of a few milliseconds: 3x of it is within the slack.
    assert breach(BOUNDS, measured(20, ttft_s=0.006), measured(20, ttft_s=0.002)) is None
    assert "TTFT p99" in str(breach(BOUNDS, measured(20, ttft_s=0.02),
                                    measured(20, ttft_s=0.002)))


def test_the_p99_not_the_mean_is_judged() -> None:
    base = measured(200, ttft_s=0.1)
    tail = Window.of([Counts(200, 0, dict(measured(190, ttft_s=0.1).ttft)),
                      Counts(0, 0, dict(measured(10, ttft_s=0.5).ttft))])
    assert "TTFT p99" in str(breach(BOUNDS, tail, base))  # a mean of 0.12 s would pass


def test_the_mean_latency_bound_is_gone_with_a_pointer() -> None:
    with pytest.raises(ValidationError, match="max_ttft_p99_ratio"):
        RolloutSettings.model_validate({"max_latency_ratio": 2})


@contextlib.asynccontextmanager
async def traffic(measurements: MemoryMeasurements, v2_ttft_s: float
                  ) -> AsyncIterator[None]:
    """Both versions' requests measured as they end, v1's at 100 ms TTFT."""
    async def loop() -> None:
        while True:
            for version, ttft in (("v1", 0.1), ("v2", v2_ttft_s)):
                measurements.record("chat", version, at=time.time(), error=False,
                                    ttft_s=ttft)
            await asyncio.sleep(0.002)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def rollout_with(v2_ttft_s: float) -> dict[str, Any]:
    settings = VersionsSettings.model_validate({"aliases": {"chat": ALIAS}})
    router = VersionRouter(settings, MemoryVersionPolicies(), lambda _: True)
    await router.seed()
    measurements = MemoryMeasurements()
    bounds = BOUNDS.model_copy(update={"check_interval_s": 0.02})
    rollouts = Rollouts(VersionService(router), router, measurements, MemoryRollouts(),
                        bounds)
    async with traffic(measurements, v2_ttft_s), asyncio.timeout(30):
        await rollouts.start("chat", "v2", [10, 50, 100], 0.1)
        while rollouts.driving("chat"):  # noqa: ASYNC110 - the driver is a task of its own
            await asyncio.sleep(0.01)
    shown = public(await rollouts.get("chat"))
    shown["applied"] = router.policy("chat").weights
    return shown


async def test_a_version_three_times_slower_to_first_token_is_rolled_back() -> None:
    shown = await rollout_with(v2_ttft_s=0.3)
    assert shown["state"] == "rolled_back"
    assert shown["applied"] == {"v1": 1}
    decisions = shown["decisions"]
    assert isinstance(decisions, list)
    breached = decisions[-2]
    assert breached["action"] == "breach"
    assert breached["step"] == 0
    assert "TTFT p99" in breached["reason"]
    assert breached["new"]["ttft_p99_s"] == pytest.approx(0.3, rel=0.15)
    assert breached["base"]["ttft_p99_s"] == pytest.approx(0.1, rel=0.15)
    assert breached["new"]["requests"] >= 10
    assert set(breached["new"]) == {"requests", "errors", "error_rate", "ttft_p50_s",
                                    "ttft_p99_s"}


async def test_a_version_within_bounds_is_promoted_to_all_the_traffic() -> None:
    shown = await rollout_with(v2_ttft_s=0.12)
    assert shown["state"] == "done"
    assert shown["applied"] == {"v2": 100.0}
    decisions = shown["decisions"]
    assert isinstance(decisions, list)
    promotes = [d for d in decisions if d["action"] == "promote"]
    assert len(promotes) == 3
    for promote in promotes:
        assert promote["new"]["ttft_p99_s"] == pytest.approx(0.12, rel=0.15)
        assert promote["base"]["requests"] >= 10


async def test_the_measure_hook_counts_errors_ttfts_and_not_client_disconnects() -> None:
    measurements = MemoryMeasurements()
    hook = VersionMeasure(measurements, GatewayMetrics(), max_caller_share=0.25).record
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
