"""The harness's HTTP side: one streamed request timed as the client sees it, and the
``/metrics`` scraper that runs beside a load test.

``stream_request`` fills a ``RequestRecord`` in place, so a caller that cancels it (a run
draining past its deadline) keeps what arrived so far. Times are ``time.perf_counter()``
minus the run's origin. Errors become short types in ``record.error``:

- ``http_<status>``: the server answered with a non-200 status;
- ``connection``: no response (refused, reset or closed before the headers);
- ``disconnected``: the stream broke after it had started;
- ``timeout``: the request's total timeout passed;
- ``stream_error``: an ``{"error": ...}`` event inside the stream;
- ``bad_event``: an event that is not JSON;
- ``no_done``: the stream ended without ``data: [DONE]``;
- ``no_usage``: it ended without a usage chunk (``stream_options.include_usage``).

Redirects are never followed (a loopback target cannot send the harness elsewhere).
Per read the work is one clock read and a split on blank lines; each event is one orjson
parse, so the client costs little next to a server sharing its CPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from loadtests.records import MetricSample, RequestRecord

logger = logging.getLogger("loadtests")

SCRAPED = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_bucket",
    "sluice_requests_in_flight", "sluice_time_to_first_token_seconds_sum",
    "sluice_time_to_first_token_seconds_count", "sluice_time_to_first_token_seconds_bucket",
})  # fmt: skip
"""Sample names kept from ``/metrics``, each summed over its labels (``le`` excepted)."""
DATA = b"data:"
DONE = b"[DONE]"
DRAIN_S = 1.0
"""How long to wait for the end of the body after ``[DONE]`` before closing the socket."""
MAX_EVENT_BYTES = 4 * 1024 * 1024
"""An unfinished event larger than this is a broken stream (``bad_event``)."""


def open_session(max_connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """A session for one run: at most ``max_connections`` sockets, no cookies, bounded.

    The session timeout is a backstop; ``stream_request`` enforces ``timeout_s`` itself.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, force_close=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s + 5.0, sock_connect=min(timeout_s, 10.0)),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def stream_request(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    record: RequestRecord,
    *,
    origin: float,
    timeout_s: float,
    keep_text: bool = False,
) -> str | None:
    """POST ``body`` to ``url`` and follow its SSE stream into ``record``.

    Sets ``record.start`` just before sending. Returns the output text when ``keep_text``
    and the request succeeded, else None. Never raises for a failed request, only when
    cancelled (then ``record`` holds what arrived before).
    """
    data = orjson.dumps(body)
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",
    }
    record.start = time.perf_counter() - origin
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                if response.status != 200:
                    record.error = f"http_{response.status}"
                    with suppress(aiohttp.ClientError):
                        await response.read()
                    record.end = time.perf_counter() - origin
                    return None
                try:
                    return await _follow(response, record, origin, keep_text)
                except _Broken as exc:
                    record.error, record.end = exc.error, exc.at
                except (aiohttp.ClientError, OSError):
                    record.error = "disconnected"
    except TimeoutError:
        record.error = record.error or "timeout"  # keeps http_<status> if its body hung
    except (aiohttp.ClientError, OSError):
        record.error = "connection"
    return None


async def _follow(
    response: aiohttp.ClientResponse, record: RequestRecord, origin: float, keep_text: bool
) -> str | None:
    """Read events until ``[DONE]`` or EOF; fills ``record``, returns the text if kept."""
    parts: list[str] = []
    pending = b""
    saw_usage = False
    chunk_times = record.chunk_times
    clock = time.perf_counter
    stream = response.content
    async for data in stream.iter_any():
        now = clock() - origin
        pending += data
        if b"\n\n" not in pending:
            if len(pending) > MAX_EVENT_BYTES:
                raise _Broken("bad_event", now)
            continue
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if not event.startswith(DATA):
                continue  # an SSE comment or a keep-alive
            payload = event[5:].strip()
            if payload == DONE:
                record.end = now
                await _drain(stream)
                if not saw_usage:
                    raise _Broken("no_usage", now)
                return "".join(parts) if keep_text else None
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise _Broken("bad_event", now) from None
            if type(obj) is not dict:
                raise _Broken("bad_event", now)
            if "error" in obj:
                raise _Broken("stream_error", now)
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                content = choice.get("text") if delta is None else delta.get("content")
                if content:
                    chunk_times.append(now)
                    if keep_text:
                        parts.append(content)
            usage = obj.get("usage")
            if usage:
                saw_usage = True
                record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                record.completion_tokens = int(usage.get("completion_tokens") or 0)
    raise _Broken("no_done", clock() - origin)


class _Broken(Exception):
    """The stream went wrong in a way ``error`` names; ``at`` is when it was seen."""

    def __init__(self, error: str, at: float) -> None:
        super().__init__(error)
        self.error, self.at = error, at


async def _drain(stream: aiohttp.StreamReader) -> None:
    """Read what follows ``[DONE]`` (the chunked terminator) so the connection is reused."""
    if stream.at_eof():
        return
    with suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_S):
            await stream.read()


class MetricsScraper:
    """Reads ``/metrics`` of each URL into ``series``, keeping the ``SCRAPED`` samples."""

    def __init__(self, urls: Sequence[str], origin: float, series: list[MetricSample]) -> None:
        self._urls = list(urls)
        self._origin = origin
        self._series = series
        self._failures: dict[str, int] = {}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, len(self._urls))),
            timeout=aiohttp.ClientTimeout(total=5.0))

    async def loop(self, interval_s: float) -> None:
        """Scrape every URL now and then every ``interval_s`` until cancelled."""
        while True:
            await self.scrape_all()
            await asyncio.sleep(interval_s)

    async def scrape_all(self) -> None:
        """One scrape of every URL, concurrently."""
        await asyncio.gather(*(self._scrape(url) for url in self._urls))

    async def close(self) -> None:
        """Close the session; log how many scrapes failed, per URL."""
        await self._session.close()
        for url, count in self._failures.items():
            logger.warning("%d scrapes of %s failed", count, url)

    async def _scrape(self, url: str) -> None:
        metrics_url = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
        t = time.perf_counter() - self._origin
        try:
            async with self._session.get(metrics_url, allow_redirects=False) as response:
                response.raise_for_status()
                samples = parse_metrics(await response.text(), url, t)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self._failures[url] = self._failures.get(url, 0) + 1
            return
        self._series += samples


def parse_metrics(text: str, source: str, t: float) -> list[MetricSample]:
    """The ``SCRAPED`` samples of a Prometheus text page, summed over labels but ``le``."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name not in SCRAPED:
                continue
            if "le" in sample.labels:
                name = f'{name}{{le="{sample.labels["le"]}"}}'
            sums[name] = sums.get(name, 0.0) + sample.value
    return [MetricSample(t, source, name, value) for name, value in sums.items()]
