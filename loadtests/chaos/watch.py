"""The gateway's view of one engine during the chaos test: ``/metrics`` polled every few
tens of milliseconds, and when that engine stopped and restarted getting traffic.

Every attempt the gateway makes on an engine either holds a lease (counted by
``sluice_engine_in_flight{engine}`` while it runs) or fails; a failed one increments
``sluice_upstream_errors_total{engine}``. A dead engine can only fail, so it "gets
traffic" exactly while its errors counter still grows or its in-flight gauge is not zero.
Both are read in one scrape; a scrape's state holds somewhere between when it was sent
and when its answer arrived, so each time below comes as that interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape of the gateway's ``/metrics``: the watched engine's series, and the
    fleet-wide failover and retry counters."""

    sent: float
    at: float
    """When the answer arrived (run clock)."""
    errors: float = 0.0
    """``sluice_upstream_errors_total{engine}``, all kinds."""
    ok: float = 0.0
    """``sluice_requests_total{engine, status="200"}``, all models and endpoints."""
    in_flight: float = 0.0
    up: float = 0.0
    circuit: float = 0.0
    failovers: dict[str, float] = field(default_factory=dict)
    """``sluice_failovers_total`` by outcome."""
    retries: float = 0.0
    budget_exhausted: float = 0.0


def parse_snapshot(text: str, engine: str, sent: float, at: float) -> Snapshot:
    """The ``Snapshot`` of one ``/metrics`` page for ``engine``."""
    values = {"errors": 0.0, "ok": 0.0, "in_flight": 0.0, "up": 0.0, "circuit": 0.0,
              "retries": 0.0, "budget_exhausted": 0.0}
    failovers: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "sluice_failovers_total":
                outcome = labels.get("outcome", "")
                failovers[outcome] = failovers.get(outcome, 0.0) + value
            elif name == "sluice_retries_total":
                values["retries"] += value
            elif name == "sluice_retry_budget_exhausted_total":
                values["budget_exhausted"] += value
            elif labels.get("engine") != engine:
                continue
            elif name == "sluice_upstream_errors_total":
                values["errors"] += value
            elif name == "sluice_requests_total" and labels.get("status") == "200":
                values["ok"] += value
            elif name in _GAUGES:
                values[_GAUGES[name]] = value
    return Snapshot(sent, at, failovers=failovers, **values)


_GAUGES = {"sluice_engine_in_flight": "in_flight", "sluice_engine_up": "up",
           "sluice_engine_circuit_state": "circuit"}


class MetricsWatch:
    """Scrapes ``<gateway>/metrics`` into ``snapshots`` until cancelled."""

    def __init__(self, gateway_url: str, engine: str, origin: float, interval_s: float) -> None:
        self._url = gateway_url.rstrip("/") + "/metrics"
        self._engine = engine
        self._origin = origin
        self._interval = interval_s
        self.snapshots: list[Snapshot] = []
        self.failures = 0
        self._scraped = asyncio.Condition()

    async def until(self, predicate: Callable[[Sequence[Snapshot]], bool]) -> None:
        """Return once ``predicate(snapshots)`` holds (checked after every scrape)."""
        async with self._scraped:
            await self._scraped.wait_for(lambda: predicate(self.snapshots))

    async def run(self) -> None:
        """Scrape now and every ``interval_s`` after the previous answer."""
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                timeout=aiohttp.ClientTimeout(total=5.0)) as http:
            while True:
                await self._scrape(http)
                await asyncio.sleep(self._interval)

    async def _scrape(self, http: aiohttp.ClientSession) -> None:
        sent = time.perf_counter() - self._origin
        try:
            async with http.get(self._url, allow_redirects=False) as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            self.failures += 1
            return
        at = time.perf_counter() - self._origin
        self.snapshots.append(parse_snapshot(text, self._engine, sent, at))
        async with self._scraped:
            self._scraped.notify_all()


@dataclass(frozen=True)
class Interval:
    """A moment known to lie in ``[low, high]`` seconds (after some reference event)."""

    low: float
    high: float


def last_before(snapshots: Sequence[Snapshot], t: float) -> Snapshot | None:
    """The last snapshot answered before ``t``."""
    before = [s for s in snapshots if s.at <= t]
    return before[-1] if before else None


def traffic_stop(snapshots: Sequence[Snapshot], kill: float, restart: float) -> Interval | None:
    """When the engine, dead from ``kill`` to ``restart``, got its last attempt, after
    ``kill``: between the send of the last scrape that still saw it busy (or the kill) and
    the answer of the first scrape that saw it idle for good (errors at their final value,
    nothing in flight). None when no scrape of the window saw it idle for good."""
    window = [s for s in snapshots if kill <= s.sent and s.at <= restart]
    if not window:
        return None
    final = window[-1].errors
    settled = len(window)
    while settled > 0 and window[settled - 1].errors == final \
            and window[settled - 1].in_flight == 0:
        settled -= 1
    if settled == len(window):
        return None
    low = window[settled - 1].sent if settled > 0 else kill
    return Interval(low - kill, window[settled].at - kill)


def first_after(snapshots: Sequence[Snapshot], t: float, *, busy: bool) -> Interval | None:
    """When the engine first got traffic after ``t`` (``busy``: an attempt in flight or a
    request finished 200 on it; else only a 200), as an interval after ``t``."""
    base = last_before(snapshots, t)
    ok0 = base.ok if base is not None else 0.0
    previous = t
    for snap in snapshots:
        if snap.sent < t:
            continue
        if snap.ok > ok0 or (busy and snap.in_flight > 0):
            return Interval(previous - t, snap.at - t)
        previous = snap.sent
    return None


def first_where(snapshots: Sequence[Snapshot], t: float, *, up: float | None = None,
                circuit: float | None = None) -> float | None:
    """Seconds after ``t`` until the answer of the first scrape sent after ``t`` with
    ``sluice_engine_up == up`` (or circuit state == ``circuit``)."""
    for snap in snapshots:
        if snap.sent >= t and (up is None or snap.up == up) and (
                circuit is None or snap.circuit == circuit):
            return snap.at - t
    return None
