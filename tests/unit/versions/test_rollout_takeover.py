"""A rollout shared by replicas through the store (in-memory backends, one fake clock
for the holds and the leases): a lapsed lease is taken over and the rollout resumed at
its recorded step and hold start; one driver per alias; a cancel or a second start
through another replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from gateway.config.versions import RolloutSettings
from gateway.core.errors import Conflict
from gateway.stores import VersionPolicy
from gateway.stores.memory import MemoryMeasurements, MemoryRollouts, MemoryVersionPolicies
from gateway.stores.protocols import RolloutRecord
from gateway.versions import VersionRouter, VersionsSettings
from gateway.versions.rollout import Rollouts
from gateway.versions.service import VersionService

SETTINGS = VersionsSettings.model_validate({"aliases": {"chat": {
    "versions": {"v1": {"model": "base-a"}, "v2": {"model": "base-b"}},
    "weights": {"v1": 1}}}})
BOUNDS = RolloutSettings(min_requests=10, check_interval_s=0.01)
HOLD_S = 10.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    """What the replicas share: the stores and the clock."""

    clock: Clock
    policies: MemoryVersionPolicies
    measurements: MemoryMeasurements
    records: MemoryRollouts

    async def replica(self, name: str) -> tuple[Rollouts, VersionRouter]:
        router = VersionRouter(SETTINGS, self.policies, lambda _: True)
        await router.seed()
        return Rollouts(VersionService(router), router, self.measurements, self.records,
                        BOUNDS, clock=self.clock, replica=name), router

    async def record(self) -> RolloutRecord:
        record = await self.records.get("chat")
        assert record is not None
        return record

    async def until(self, check: Callable[[RolloutRecord], bool]) -> RolloutRecord:
        async with asyncio.timeout(20):
            while not check(record := await self.record()):  # noqa: ASYNC110 - a driver
                await asyncio.sleep(0.005)
        return record

    async def advance_to(self, now: float) -> None:
        """Move the clock on once the second it is in has traffic enough to judge (the
        fake clock stands still between moves)."""
        second = int(self.clock.now)
        async with asyncio.timeout(20):
            while not await self._traffic(second):  # noqa: ASYNC110 - the traffic task
                await asyncio.sleep(0.005)
        self.clock.now = now

    async def _traffic(self, second: int) -> bool:
        window = await self.measurements.window("chat", "v2", second, second + 1)
        return window.requests >= 2 * BOUNDS.min_requests

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self.clock.now + seconds)


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """Healthy traffic on both versions, measured at the fake clock's time."""
    clock = Clock()
    shared = Fleet(clock, MemoryVersionPolicies(), MemoryMeasurements(), MemoryRollouts(clock))

    async def traffic() -> None:
        while True:
            for version in ("v1", "v2"):
                shared.measurements.record("chat", version, at=clock.now, error=False,
                                           ttft_s=0.1)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(traffic())
    yield shared
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def stop(rollouts: Rollouts) -> None:
    """Stop a replica's drivers as a crash would: its leases are not given back."""
    for task in list(rollouts._drivers.values()):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ended(fleet: Fleet, *replicas: Rollouts) -> None:
    async with asyncio.timeout(20):
        while any(r.driving("chat") for r in replicas):  # noqa: ASYNC110 - driver tasks
            await asyncio.sleep(0.005)


async def test_a_lapsed_lease_is_taken_over_and_the_rollout_resumed_where_it_was(
        fleet: Fleet) -> None:
    (a, _), (b, b_router) = await fleet.replica("a"), await fleet.replica("b")
    await a.start("chat", "v2", [10, 50, 100], HOLD_S)
    await fleet.advance(HOLD_S + 0.5)  # the first hold ends: a promotes to 50 %
    at_50 = await fleet.until(lambda r: r.step == 1)
    assert at_50.step_started == 1010.5
    assert await b.adopt() == []  # a holds the lease
    await stop(a)
    assert await b.adopt() == []  # its lease has not lapsed yet
    await fleet.advance(1.0)

    assert await b.adopt() == ["chat"]
    resumed = await fleet.until(lambda r: r.decisions[-1]["action"] == "resume")
    assert (resumed.owner, resumed.step, resumed.step_started) == ("b", 1, 1010.5)
    assert "took over from a" in resumed.decisions[-1]["reason"]
    assert await b.adopt() == []  # one driver per alias
    assert b_router.policy("chat").weights == {"v1": 50, "v2": 50}  # b applies the split

    await fleet.advance_to(1010.5 + HOLD_S + 0.5)  # the 50 % hold ends from its start
    await fleet.until(lambda r: r.step == 2)
    await fleet.advance(HOLD_S + 0.5)
    await ended(fleet, b)
    done = await fleet.record()
    assert done.state == "done"
    actions = [d["action"] for d in done.decisions]
    assert actions == ["step", "promote", "step", "resume", "promote", "step", "promote",
                       "done"]
    assert b_router.policy("chat").weights == {"v2": 100}


async def test_a_replica_shut_down_gives_its_lease_back(fleet: Fleet) -> None:
    (a, _), (b, _) = await fleet.replica("a"), await fleet.replica("b")
    await a.start("chat", "v2", [50, 100], HOLD_S)
    await a.aclose()
    assert (await fleet.record()).state == "running"
    assert await b.adopt() == ["chat"]  # at once: no lease to wait out
    assert (await fleet.until(lambda r: r.owner == "b")).step == 0


async def test_a_cancel_through_another_replica_stops_the_driver(fleet: Fleet) -> None:
    (a, a_router), (b, _) = await fleet.replica("a"), await fleet.replica("b")
    await a.start("chat", "v2", [10, 100], HOLD_S)
    await fleet.until(lambda r: a_router.policy("chat").weights == {"v1": 90, "v2": 10})
    with pytest.raises(Conflict):
        await b.start("chat", "v2", [100], 1)
    cancelled = await b.cancel("chat")
    assert cancelled.state == "cancelled"
    assert cancelled.decisions[-1]["action"] == "cancelled"
    await ended(fleet, a)  # a saw it at its next check
    await fleet.advance(2 * HOLD_S)
    assert await b.adopt() == []
    assert (await fleet.record()).state == "cancelled"
    assert a_router.policy("chat").weights == {"v1": 90, "v2": 10}  # left where it was
    await b.start("chat", "v2", [100], 1)  # a new one may start


async def test_a_policy_changed_before_a_takeover_is_left_in_force(fleet: Fleet) -> None:
    (a, a_router), (b, _) = await fleet.replica("a"), await fleet.replica("b")
    await a.start("chat", "v2", [10, 100], HOLD_S)
    await fleet.until(lambda r: a_router.policy("chat").weights == {"v1": 90, "v2": 10})
    await stop(a)
    await VersionService(a_router).set("chat", VersionPolicy({"v1": 70, "v2": 30}))
    await fleet.advance(1.0)
    assert await b.adopt() == ["chat"]
    await ended(fleet, b)
    record = await fleet.record()
    assert record.state == "superseded"
    assert [d["action"] for d in record.decisions][-2:] == ["resume", "superseded"]
    assert a_router.policy("chat").weights == {"v1": 70, "v2": 30}
