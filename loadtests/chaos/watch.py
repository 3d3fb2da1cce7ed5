"""The gateway's view of one engine during the chaos test: ``/metrics`` polled every few
tens of milliseconds (a ``loadtests.scrape.MetricsPoller`` with ``snapshot_reader``), and
when that engine stopped and restarted getting traffic.

Every attempt the gateway makes on an engine either holds a lease (counted by
``sluice_engine_in_flight{engine}`` while it runs) or fails; a failed one increments
``sluice_upstream_errors_total{engine}``. A dead engine can only fail, so it "gets
traffic" exactly while its errors counter still grows or its in-flight gauge is not zero.
Both are read in one scrape; a scrape's state holds somewhere between when it was sent
and when its answer arrived, so each time below comes as that interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.scrape import PageReader, samples


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
    for sample in samples(text):
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


def snapshot_reader(engine: str) -> PageReader[Snapshot]:
    """A ``MetricsPoller`` reader keeping one ``Snapshot`` of ``engine`` per page."""
    def read(url: str, text: str, sent: float, answered: float) -> list[Snapshot]:
        return [parse_snapshot(text, engine, sent, answered)]

    return read


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
