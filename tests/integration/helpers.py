"""Small helpers for tests that drive a gateway and read engines' and gateway's metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.launch import free_port


def metric(text: str, line_start: str) -> float:
    """Sum of the samples of a Prometheus page whose line starts with ``line_start``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def events_of(raw: bytes) -> list[str]:
    """The SSE events of a response body, in order."""
    return [e for e in raw.decode().split("\n\n") if e]


async def wait_until(check: Callable[[], Awaitable[bool]], what: str,
                     timeout_s: float = 20.0) -> None:
    """Poll ``check`` until it is true; fail after a generous ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # noqa: ASYNC110 - the condition is remote state
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def sim_received(http: httpx.AsyncClient, sim: str) -> int:
    """Generation requests a simulator has taken in so far: those that left it (finished
    or aborted) plus those still running or waiting. Requests it refused with an error
    before queueing them are not counted."""
    page = (await http.get(sim + "/metrics")).text
    return int(metric(page, "vllm:request_success_total")
               + metric(page, "vllm:num_requests_running")
               + metric(page, "vllm:num_requests_waiting"))


async def sim_handled(http: httpx.AsyncClient, sim: str, path: str) -> int:
    """Requests to ``path`` a simulator answered with a 2xx (vLLM's
    ``http_requests_total{handler}``): what it counts for the routes that are not
    generations (embeddings, tokenize, ...)."""
    page = (await http.get(sim + "/metrics")).text
    return int(metric(page, f'http_requests_total{{handler="{path}",method="POST",'
                            'status="2xx"}'))


async def sim_queued(http: httpx.AsyncClient, sim: str) -> int:
    """A simulator's running + waiting requests now."""
    page = (await http.get(sim + "/metrics")).text
    return int(metric(page, "vllm:num_requests_running")
               + metric(page, "vllm:num_requests_waiting"))


async def gateway_metric(http: httpx.AsyncClient, gateway: str, line_start: str) -> float:
    return metric((await http.get(gateway + "/metrics")).text, line_start)


async def served_by(http: httpx.AsyncClient, sims: list[str], path: str,
                    body: dict[str, object]) -> int:
    """Send one request through the gateway (``http``'s base URL); the index of the
    simulator that took it. Nothing else may reach these simulators meanwhile."""
    before = [await sim_received(http, sim) for sim in sims]
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    after = [await sim_received(http, sim) for sim in sims]
    changed = [i for i in range(len(sims)) if after[i] != before[i]]
    assert len(changed) == 1, (before, after)
    return changed[0]


async def scraped_once(http: httpx.AsyncClient, gateway: str, engines: int) -> None:
    """Wait for the gateway's first load scrape of each engine ``e0``, ``e1``, ...: with a
    long scrape interval, none comes after it to change what the router sees."""
    async def every_engine_scraped() -> bool:
        page = (await http.get(gateway + "/metrics")).text
        return all(f'sluice_engine_requests{{engine="e{i}",state="running"}}' in page
                   for i in range(engines))
    await wait_until(every_engine_scraped, "the first load scrape of every engine")


async def ready_pids(url: str, tries: int) -> set[int]:
    """The process ids that answered ``/ready`` with 200, one new connection per try."""
    pids: set[int] = set()
    for _ in range(tries):
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                response = await http.get(url + "/ready")
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            pids.add(response.json()["pid"])
    return pids


@contextlib.asynccontextmanager
async def two_worker_gateway(tmp_path: Path, engine: str, settings: dict[str, Any] | None = None,
                             env: dict[str, str] | None = None
                             ) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """``sluice serve --workers 2`` in front of ``engine``, until both workers answer
    ``/ready``; killed at the end if still running. Yields the process and its URL."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "default_engine": False, "access_log": False,
        "engines": [{"name": "sim", "url": engine}], **(settings or {})}))
    process = subprocess.Popen(  # noqa: ASYNC220 - kept as Popen so teardown can kill it
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(30):
            while len(await ready_pids(url, 4)) != 2:  # noqa: ASYNC110 - remote state
                await asyncio.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
