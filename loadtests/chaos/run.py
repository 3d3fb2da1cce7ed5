"""The chaos test's run: concurrent chat streams through the gateway while one engine is
SIGKILLed and later restarted on the same port.

``streams`` closed-loop workers each send one streamed chat request after another, with
a fixed ``max_tokens`` drawn per request (the simulator generates exactly that many
tokens), ramping up over the first second so the streams are at every stage when the
kill comes. The gateway's ``/metrics`` is scraped alongside (``loadtests.chaos.watch``).
Sending stops ``after_restart_s`` after the engine is back, and not before the gateway
finished a request on it (up to ``return_timeout_s``); every request is bounded by
``request_timeout_s``, so the run ends by itself. ``loadtests.chaos.report`` judges the
result.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

from loadtests.chaos.watch import Snapshot, first_after, snapshot_reader
from loadtests.client import open_session, stream_chat
from loadtests.records import StreamRecord
from loadtests.scrape import MetricsPoller

_RAMP_S = 1.0
_FINAL_SCRAPE_S = 5.0


class Fleet(Protocol):
    """What the run needs of the engines (``loadtests.fleet.EngineFleet`` has it)."""

    def kill(self, index: int) -> None: ...

    async def restart(self, index: int) -> None: ...


@dataclass(frozen=True)
class ChaosPlan:
    """Load, timeline and engines of one run."""

    streams: int = 300
    model: str = "sim-model"
    max_tokens: tuple[int, int] = (32, 96)
    """Each request's ``max_tokens``, uniform in this range (inclusive)."""
    kill_at_s: float = 8.0
    down_s: float = 3.0
    """From the kill to the start of the restart."""
    after_restart_s: float = 8.0
    return_timeout_s: float = 20.0
    request_timeout_s: float = 60.0
    poll_interval_s: float = 0.025
    victim: int = 0
    engine_names: tuple[str, ...] = ("engine-0", "engine-1", "engine-2")
    """The gateway's names for the engines, in fleet order."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each engine's simulator ``seed``: distinct seeds tell the engines' texts apart."""
    seed: int = 0
    """Seeds the request lengths."""

    @property
    def victim_name(self) -> str:
        return self.engine_names[self.victim]


@dataclass
class ChaosRun:
    """What happened; times are seconds on the run's clock."""

    plan: ChaosPlan
    records: list[StreamRecord] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    scrape_failures: int = 0
    kill: float = 0.0
    """When SIGKILL was sent."""
    reaped: float = 0.0
    restart: float = 0.0
    """When the restart began (a new process on the same port)."""
    restarted: float = 0.0
    """When the new process answered ``/health``."""
    stopped_sending: float = 0.0
    ended: float = 0.0


async def run_chaos(gateway_url: str, fleet: Fleet, plan: ChaosPlan) -> ChaosRun:
    """Run ``plan`` against the gateway at ``gateway_url`` in front of ``fleet``."""
    origin = time.perf_counter()
    result = ChaosRun(plan)
    stop = asyncio.Event()
    snapshots = result.snapshots

    def now() -> float:
        return time.perf_counter() - origin

    async with (open_session(plan.streams, plan.request_timeout_s) as session,
                MetricsPoller([gateway_url], origin, snapshot_reader(plan.victim_name),
                              snapshots) as watch):
        async def worker(number: int) -> None:
            rng = random.Random(plan.seed * 1_000_003 + number)
            await asyncio.sleep(_RAMP_S * number / plan.streams)
            turn = 0
            while not stop.is_set():
                record = StreamRecord(len(result.records), f"chaos {number}.{turn}: tell me "
                                      "a story", rng.randint(*plan.max_tokens))
                result.records.append(record)
                await stream_chat(session, gateway_url, plan.model, record, origin=origin,
                                  timeout_s=plan.request_timeout_s)
                turn += 1

        tasks = [asyncio.create_task(watch.loop(plan.poll_interval_s))]
        workers = [asyncio.create_task(worker(n)) for n in range(plan.streams)]
        try:
            await asyncio.sleep(plan.kill_at_s)
            result.kill = now()
            await asyncio.to_thread(fleet.kill, plan.victim)  # it waits for the exit
            result.reaped = now()
            await asyncio.sleep(plan.down_s)
            result.restart = now()
            await fleet.restart(plan.victim)
            result.restarted = now()
            await asyncio.sleep(plan.after_restart_s)
            await _until(watch, lambda: first_after(
                snapshots, result.restarted, busy=False) is not None,
                result.restarted + plan.return_timeout_s - now())
            stop.set()
            result.stopped_sending = now()
            await asyncio.gather(*workers)
            result.ended = now()
            await _until(watch, lambda: bool(snapshots) and snapshots[-1].sent >= result.ended,
                         _FINAL_SCRAPE_S)
        finally:
            stop.set()
            for task in (*tasks, *workers):
                task.cancel()
            await asyncio.gather(*tasks, *workers, return_exceptions=True)
    result.scrape_failures = sum(watch.failures.values())
    return result


async def _until(watch: MetricsPoller[Snapshot], predicate: Callable[[], bool],
                 timeout_s: float) -> None:
    """Wait until a scrape satisfies ``predicate``, or ``timeout_s`` passes."""
    with suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await watch.until(predicate)
