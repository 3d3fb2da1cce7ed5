"""Reading Prometheus ``/metrics`` pages: the one place the harness fetches and parses them.

``MetricsPoller`` reads the pages of a few base URLs now and every ``interval_s`` while a
run goes on, handing each page to a reader that turns it into records (the harness keeps
``MetricSample``s, the chaos test keeps ``Snapshot``s of one engine). ``read_page`` fetches
one page outside an event loop. ``samples`` iterates a page's samples; ``parse_metrics``
and ``histogram`` are the harness's two readings of them.

Every fetch is bounded (5 s for the poller, ``timeout_s`` for ``read_page``) and never
follows redirects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Generic, Self, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from loadtests.records import MetricSample

logger = logging.getLogger("loadtests")

SCRAPED = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_bucket",
    "sluice_requests_in_flight", "sluice_time_to_first_token_seconds_sum",
    "sluice_time_to_first_token_seconds_count", "sluice_time_to_first_token_seconds_bucket",
})  # fmt: skip
"""Sample names the harness keeps, each summed over its labels (``le`` excepted)."""
POLL_TIMEOUT_S = 5.0

T = TypeVar("T")
PageReader = Callable[[str, str, float, float], Iterable[T]]
"""``reader(url, text, sent, answered)``: the records of one page of ``url``, fetched
between ``sent`` and ``answered`` (run clock). A ``ValueError`` counts as a failed scrape."""


def metrics_url(url: str) -> str:
    """``url``'s ``/metrics`` page (``url`` may already name it)."""
    base = url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a Prometheus text page, in page order."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def parse_metrics(text: str, source: str, t: float) -> list[MetricSample]:
    """The ``SCRAPED`` samples of a page, summed over labels but ``le``, at time ``t``."""
    sums: dict[str, float] = {}
    for sample in samples(text):
        name = sample.name
        if name not in SCRAPED:
            continue
        if "le" in sample.labels:
            name = f'{name}{{le="{sample.labels["le"]}"}}'
        sums[name] = sums.get(name, 0.0) + sample.value
    return [MetricSample(t, source, name, value) for name, value in sums.items()]


def read_samples(url: str, text: str, sent: float, answered: float) -> list[MetricSample]:
    """The harness's ``PageReader``: ``parse_metrics`` stamped with the send time."""
    return parse_metrics(text, url, sent)


def histogram(text: str, bucket_name: str) -> dict[float, float]:
    """Cumulative counts of one histogram's ``bucket_name`` samples by upper bound,
    summed over the other labels."""
    buckets: dict[float, float] = {}
    for sample in samples(text):
        if sample.name == bucket_name:
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


async def fetch_page(http: aiohttp.ClientSession, url: str,
                     headers: Mapping[str, str] | None = None) -> str:
    """The text of ``url``'s ``/metrics`` page (``aiohttp.ClientError`` for a non-200)."""
    async with http.get(metrics_url(url), allow_redirects=False, headers=headers) as response:
        response.raise_for_status()
        return await response.text()


def read_page(url: str, timeout_s: float = 10.0) -> str:
    """``fetch_page`` from synchronous code (no event loop may be running)."""
    async def once() -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            return await fetch_page(http, url)

    return asyncio.run(once())


class MetricsPoller(Generic[T]):
    """Reads the ``/metrics`` page of each of ``urls`` into ``into`` through ``reader``.

    ``failures`` counts the failed scrapes per URL (logged by ``close``). Use it as an
    ``async with`` block, or call ``close``. ``headers`` maps a URL to the headers sent
    with its scrapes (e.g. the API key of a target that asks for one).
    """

    def __init__(self, urls: Sequence[str], origin: float, reader: PageReader[T],
                 into: list[T], headers: Mapping[str, Mapping[str, str]] | None = None
                 ) -> None:
        self._urls = list(urls)
        self._headers = dict(headers or {})
        self._origin = origin
        self._reader = reader
        self._into = into
        self.failures: dict[str, int] = {}
        self._scraped = asyncio.Condition()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, len(self._urls))),
            timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT_S))

    async def loop(self, interval_s: float) -> None:
        """Scrape every URL now and then every ``interval_s`` until cancelled."""
        while True:
            await self.scrape_all()
            await asyncio.sleep(interval_s)

    async def scrape_all(self) -> None:
        """One scrape of every URL, concurrently."""
        await asyncio.gather(*(self._scrape(url) for url in self._urls))
        async with self._scraped:
            self._scraped.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked now and after every scrape)."""
        async with self._scraped:
            await self._scraped.wait_for(predicate)

    async def close(self) -> None:
        """Close the session; log how many scrapes failed, per URL."""
        await self._session.close()
        for url, count in self.failures.items():
            logger.warning("%d scrapes of %s failed", count, url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _scrape(self, url: str) -> None:
        sent = time.perf_counter() - self._origin
        try:
            text = await fetch_page(self._session, url, self._headers.get(url))
            answered = time.perf_counter() - self._origin
            records = list(self._reader(url, text, sent, answered))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.failures[url] = self.failures.get(url, 0) + 1
            return
        self._into.extend(records)
