"""The stream watchdog: one task bounding every open stream's stalls and total time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.upstream.watchdog import Watchdog


@dataclass(eq=False)
class Stream:
    last_read: float
    deadline: float
    between_reads_s: float = 1.0
    expired: list[str] = field(default_factory=list)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def expire(self, reason: str) -> None:
        self.expired.append(reason)
        self.gone.set()


def test_check_expires_stalled_and_overdue_streams_once() -> None:
    dog = Watchdog(interval_s=1)
    fresh, stalled, overdue = Stream(9.6, 100), Stream(8.9, 100), Stream(9.9, 10)
    for stream in (fresh, stalled, overdue):
        dog._streams.add(stream)
    dog.check(10.0)
    dog.check(10.5)
    assert (fresh.expired, stalled.expired, overdue.expired) == ([], ["stall"], ["total"])
    dog.check(11.0)
    assert fresh.expired == ["stall"]


async def test_the_task_runs_checks_until_closed() -> None:
    dog = Watchdog(interval_s=0.01)
    loop = asyncio.get_running_loop()
    stream = Stream(loop.time(), loop.time() + 60, between_reads_s=0.05)
    dog.track(stream)
    async with asyncio.timeout(5):
        await stream.gone.wait()
    assert stream.expired == ["stall"]
    dog.untrack(stream)
    await dog.aclose()
