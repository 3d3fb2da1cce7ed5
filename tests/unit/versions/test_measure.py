"""What the rollout guard judges a version by: split-assigned generations only, and no
caller more than its share of them."""

from __future__ import annotations

import time

import pytest

from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT, EMBEDDINGS, TOKENIZE, Endpoint
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.memory import MemoryMeasurements
from gateway.versions.stats import CallerShare, VersionMeasure


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finished(caller: str, *, error: bool = False, endpoint: Endpoint = CHAT,
             pinned: str | None = None) -> RequestContext:
    ctx = RequestContext.new("r", endpoint, {"model": "chat"}, principal=caller)
    ctx.version, ctx.pinned_version = "v2", pinned
    ctx.outcome.status = "500" if error else "200"
    return ctx


async def judged(measure: VersionMeasure, measurements: MemoryMeasurements,
                 requests: list[RequestContext]) -> tuple[int, int]:
    for ctx in requests:
        await measure.record(ctx)
    now = int(time.time())
    window = await measurements.window("chat", "v2", now - 60, now + 2)
    return window.requests, window.errors


def test_a_lone_caller_counts_whole() -> None:
    share = CallerShare(0.25, clock=Clock())
    assert all(share.admit("chat", "v2", "k-1") for _ in range(1000))


def test_a_flooding_caller_gets_no_more_than_an_equal_part_of_two() -> None:
    share, counted = CallerShare(0.25, clock=Clock()), {"honest": 0, "flood": 0}
    for i in range(2000):
        caller = "honest" if i % 100 == 0 else "flood"
        counted[caller] += share.admit("chat", "v2", caller)
    assert counted["honest"] == 20
    assert counted["flood"] <= counted["honest"] + 1


def test_with_many_callers_one_is_held_to_max_share() -> None:
    share, flood, rest = CallerShare(0.25, clock=Clock()), 0, 0
    for i in range(10_000):
        caller = "flood" if i % 10 else f"k-{i % 70}"  # 7 other callers, 10 % of requests
        if share.admit("chat", "v2", caller):
            if caller == "flood":
                flood += 1
            else:
                rest += 1
    assert rest == 1000
    assert flood / (flood + rest) <= 0.25 + 0.01


def test_old_requests_stop_counting_and_callers_are_bounded() -> None:
    clock = Clock()
    share = CallerShare(0.5, half_life_s=10, max_callers=3, clock=clock)
    for _ in range(100):
        share.admit("chat", "v2", "a")
    share.admit("chat", "v2", "b")
    assert not share.admit("chat", "v2", "a")  # a had its half already
    clock.now += 200  # twenty half-lives: a's part has decayed away
    assert share.admit("chat", "v2", "a")
    for caller in "cdefg":
        share.admit("chat", "v2", caller)
    assert len(share._tallies[("chat", "v2")].callers) == 3


async def test_pinned_and_non_generation_requests_are_not_judged() -> None:
    measurements, metrics = MemoryMeasurements(), GatewayMetrics()
    measure = VersionMeasure(measurements, metrics, max_caller_share=0.25)
    requests = [finished("k-1", endpoint=TOKENIZE), finished("k-1", endpoint=EMBEDDINGS),
                finished("k-1", pinned="v2"), finished("k-1", error=True)]
    assert await judged(measure, measurements, requests) == (1, 1)
    skipped = metrics.version_samples_skipped
    assert skipped.labels("chat", "endpoint")._value.get() == 2
    assert skipped.labels("chat", "pinned")._value.get() == 1


@pytest.mark.parametrize("max_share", [0.25, 0.5])
async def test_one_callers_successes_cannot_dilute_anothers_errors(max_share: float) -> None:
    measurements = MemoryMeasurements()
    measure = VersionMeasure(measurements, GatewayMetrics(), max_caller_share=max_share)
    requests = []
    for i in range(40):
        requests.append(finished("honest", error=i % 2 == 0))
        requests += [finished("flood") for _ in range(50)]
    requests_judged, errors = await judged(measure, measurements, requests)
    assert errors == 20
    assert errors / requests_judged >= 0.24  # 50 % of half the judged requests
