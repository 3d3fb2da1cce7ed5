"""Running a scenario against one target: requests paced by an arrival process, recorded
one by one, with the target's (and engines') ``/metrics`` scraped alongside.

A scenario, as YAML (``Scenario.from_yaml``)::

    name: chat-poisson
    workload: {kind: random, input_len: [200, 400], output_len: 128, model: sim-model}
    arrival: {kind: poisson, rate: 8}
    num_requests: 500        # and/or duration_s: 60; the first bound reached ends sending
    request_timeout_s: 120
    drain_timeout_s: 30      # then what is still in flight is cancelled, as `timeout`
    seed: 1
    warmup_requests: 8
    levels: [2, 4, 8, 16]    # sweep(): one run per rate (or concurrency)

Every run stops by itself: sending ends at ``num_requests`` or ``duration_s``, in-flight
requests get ``drain_timeout_s`` to finish, and each request has ``request_timeout_s``.
Only loopback targets are accepted unless ``allow_remote`` (``check_target``); an
``api_key`` is sent to the target (and with scrapes of the target's own ``/metrics``) as
``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

import aiohttp
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadtests.arrivals import Arrival, ConcurrencyArrival, Pacer, make_pacer, with_level
from loadtests.client import open_session, stream_request
from loadtests.records import MetricSample, RequestRecord, RunResult
from loadtests.scrape import MetricsPoller, read_samples
from loadtests.workloads import Request, RequestSource, Workload

logger = logging.getLogger("loadtests")

WARMUP_CONCURRENCY = 8
Seconds = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class Scenario(BaseModel):
    """What to send, how fast, and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = "scenario"
    workload: Workload
    arrival: Arrival
    num_requests: PositiveInt | None = None
    """Stop sending after this many requests (warm-up not counted)."""
    duration_s: Seconds | None = None
    """Stop sending this long after the first request."""
    request_timeout_s: Seconds = 300.0
    drain_timeout_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 60.0
    """After sending stopped, how long in-flight requests may still take."""
    seed: int = 0
    warmup_requests: NonNegativeInt = 0
    """Sent (and awaited) before the run, from a separate seed; not recorded."""
    max_in_flight: PositiveInt = 2048
    """Safety bound on open requests (and sockets); an open loop past it sends late."""
    levels: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=list)
    """The rates or concurrencies ``sweep`` runs, in order."""

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("a scenario needs num_requests, duration_s or both")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load a scenario from a YAML file."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


def check_target(url: str, *, allow_remote: bool = False) -> None:
    """Raise ValueError unless ``url`` is http(s), and (without ``allow_remote``) on
    127.0.0.0/8, ::1 or localhost."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if host == "localhost" or allow_remote:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing a non-loopback target: {url!r} (host {host!r}); "
                         "pass --allow-remote to measure a server on another host")


def check_loopback(url: str) -> None:
    """Raise ValueError unless ``url`` is http(s) on 127.0.0.0/8, ::1 or localhost."""
    check_target(url)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` for ``api_key``; nothing without one."""
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


async def run(
    target_name: str,
    base_url: str,
    scenario: Scenario,
    *,
    scrape_urls: Sequence[str] = (),
    scrape_interval_s: float = 0.5,
    progress: bool = True,
    api_key: str | None = None,
    allow_remote: bool = False,
) -> RunResult:
    """Run ``scenario`` against ``base_url`` (an OpenAI-compatible server) once.

    ``scrape_urls`` are base URLs whose ``/metrics`` is read every ``scrape_interval_s``
    (first at the start, last after the drain); their samples come back as ``series``.
    ``api_key`` goes to ``base_url`` (requests, and scrapes of its own ``/metrics``);
    ``allow_remote`` accepts URLs that are not on this host.
    """
    for url in (base_url, *scrape_urls):
        check_target(url, allow_remote=allow_remote)
    if not scrape_interval_s > 0:
        raise ValueError("scrape_interval_s must be > 0")
    base_url = base_url.rstrip("/")
    auth = auth_headers(api_key)
    scrape_auth = {url: auth for url in scrape_urls if url.rstrip("/") == base_url}
    session = open_session(scenario.max_in_flight, scenario.request_timeout_s, auth)
    try:
        if scenario.warmup_requests:
            await _warmup(session, base_url, scenario)
        origin = time.perf_counter()
        started_at = datetime.now(UTC).isoformat()
        series: list[MetricSample] = []
        scraper = MetricsPoller(scrape_urls, origin, read_samples, series, scrape_auth)
        scraping = asyncio.create_task(scraper.loop(scrape_interval_s))
        try:
            with _ProgressView(progress, scenario) as view:
                source = RequestSource(scenario.workload, scenario.seed)
                pacer = make_pacer(scenario.arrival, scenario.seed,
                                   duration_s=scenario.duration_s,
                                   num_requests=scenario.num_requests)
                records = await _drive(session, base_url, scenario, source, pacer, origin, view)
        finally:
            scraping.cancel()
            await asyncio.gather(scraping, return_exceptions=True)
            try:
                await scraper.scrape_all()  # the state after the drain
            finally:
                await scraper.close()
    finally:
        await session.close()
    return RunResult(
        target=target_name, base_url=base_url, scenario=scenario.model_dump(mode="json"),
        started_at=started_at, duration_s=_duration(records, time.perf_counter() - origin),
        records=records, series=series,
    )  # fmt: skip


async def sweep(
    target_name: str,
    base_url: str,
    scenario: Scenario,
    *,
    levels: Sequence[float] | None = None,
    scrape_urls: Sequence[str] = (),
    scrape_interval_s: float = 0.5,
    progress: bool = True,
    api_key: str | None = None,
    allow_remote: bool = False,
) -> list[RunResult]:
    """One ``run`` per level (``levels`` or ``scenario.levels``), in order, same seed each.

    A level sets the arrival's rate, or its concurrency for a ``concurrency`` arrival.
    """
    points = list(scenario.levels if levels is None else levels)
    if not points:
        raise ValueError("a sweep needs levels")
    runs = [(lv, scenario.model_copy(update={"arrival": with_level(scenario.arrival, lv)}))
            for lv in points]  # every level is checked before the first run starts
    results: list[RunResult] = []
    for level, point in runs:
        result = await run(target_name, base_url, point, scrape_urls=scrape_urls,
                           scrape_interval_s=scrape_interval_s, progress=progress,
                           api_key=api_key, allow_remote=allow_remote)
        result.level = level
        results.append(result)
    return results


async def _warmup(session: aiohttp.ClientSession, base_url: str, scenario: Scenario) -> None:
    count = scenario.warmup_requests
    arrival = ConcurrencyArrival(concurrency=min(count, WARMUP_CONCURRENCY))
    warm = scenario.model_copy(update={
        "num_requests": count, "duration_s": None, "drain_timeout_s": scenario.request_timeout_s,
    })
    source = RequestSource(scenario.workload, f"warmup:{scenario.seed}")
    records = await _drive(session, base_url, warm, source, make_pacer(arrival, 0),
                           time.perf_counter(), _ProgressView(False, warm))
    failed = sum(1 for record in records if not record.ok)
    if failed:
        logger.warning("%d of %d warm-up requests failed", failed, count)


async def _drive(
    session: aiohttp.ClientSession, base_url: str, scenario: Scenario, source: RequestSource,
    pacer: Pacer, origin: float, view: _ProgressView,
) -> list[RequestRecord]:
    """Send until a bound is reached, drain, cancel the rest; the records in send order."""
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task[None]] = set()
    completed = asyncio.Event()
    slots = asyncio.Semaphore(scenario.max_in_flight)
    limit = scenario.num_requests or float("inf")

    async def one(request: Request, record: RequestRecord) -> None:
        text = None
        try:
            text = await stream_request(
                session, base_url + request.path, request.body, record, origin=origin,
                timeout_s=scenario.request_timeout_s, keep_text=request.session is not None)
        except asyncio.CancelledError:
            record.error = "timeout"  # cancelled after the drain timeout
            raise
        except Exception:
            record.error = "client_error"  # a bug in the harness, not the target's fault
            logger.exception("request %d failed in the client", record.index)
        finally:
            slots.release()
            pacer.release()
            source.complete(request, text if record.ok else None)
            completed.set()
            view.advance(record)

    async def dispatch() -> None:
        while len(records) < limit:
            await pacer.acquire()
            while (request := source.take()) is None:
                if source.exhausted:
                    return
                completed.clear()
                await completed.wait()
            await slots.acquire()
            record = RequestRecord(index=len(records), start=time.perf_counter() - origin,
                                   model=request.model, session=request.session,
                                   turn=request.turn)
            records.append(record)
            task = asyncio.create_task(one(request, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    deadline = None if scenario.duration_s is None else loop.time() + scenario.duration_s
    try:
        with suppress(TimeoutError):  # duration_s reached: stop sending
            async with asyncio.timeout_at(deadline):
                await dispatch()
        if tasks:
            await asyncio.wait(set(tasks), timeout=scenario.drain_timeout_s)
    finally:  # past the drain, or the run itself was cancelled: nothing outlives it
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for record in records:
        if record.end is None and record.error is None:
            record.error = "timeout"  # cancelled before it even started
    return records


def _duration(records: list[RequestRecord], fallback: float) -> float:
    """First send to the last end (``fallback``, the time now, if nothing ended)."""
    if not records:
        return 0.0
    ends = [record.end for record in records if record.end is not None]
    return (max(ends) if ends else fallback) - min(record.start for record in records)


class _ProgressView:
    """A rich progress bar (completed, ok/failed, elapsed), or nothing when disabled."""

    def __init__(self, enabled: bool, scenario: Scenario) -> None:
        self._ok = self._failed = 0
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
                TimeElapsedColumn(), refresh_per_second=2)
            self._task = self._progress.add_task(
                scenario.name, total=scenario.num_requests, ok=0, failed=0)

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, record: RequestRecord) -> None:
        """Count one finished request."""
        if record.ok:
            self._ok += 1
        else:
            self._failed += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, ok=self._ok, failed=self._failed)
