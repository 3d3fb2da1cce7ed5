"""`sluice serve --workers 2`: two processes on one port, drained together on SIGTERM
(the same timeline as one process: not ready for drain.delay_s, then the drain)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from simulator import SimConfig
from tests.integration.helpers import ready_pids, two_worker_gateway, wait_until

STREAM = {"model": "sim-model", "stream": True, "max_tokens": 30,
          "messages": [{"role": "user", "content": "count slowly"}]}


@pytest.fixture
async def two_workers(tmp_path: Path, start_sim) -> AsyncIterator[
        tuple[subprocess.Popen[bytes], str]]:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=40))  # ~1.2 s stream
    async with two_worker_gateway(tmp_path, sim,
                                  {"drain": {"delay_s": 1.5, "timeout_s": 20}}) as running:
        yield running


async def _stream(url: str, started: asyncio.Event | None = None) -> list[str]:
    """One whole stream's events; ``started`` is set once its first bytes arrived."""
    body = b""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        assert response.status_code == 200
        async for data in response.aiter_bytes():
            body += data
            if started is not None:
                started.set()
    return [e for e in body.decode().split("\n\n") if e]


async def _ready_statuses(url: str, tries: int) -> list[int]:
    """The statuses of ``/ready``, one new connection per try (none when refused)."""
    statuses = []
    for _ in range(tries):
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                statuses.append((await http.get(url + "/ready")).status_code)
        except httpx.TransportError:
            continue
    return statuses


async def _refused(url: str) -> bool:
    return not await _ready_statuses(url, 1)


def _complete(events: list[str]) -> bool:
    words = [e for e in events if '"content":"' in e and '"content":""' not in e]
    return events[-1] == "data: [DONE]" and len(words) == 30 \
        and not [e for e in events if '"error"' in e]


async def test_workers_share_the_port_and_serve_streams(two_workers) -> None:
    process, url = two_workers
    pids = await ready_pids(url, 20)
    assert len(pids) == 2
    assert process.pid not in pids
    results = await asyncio.gather(*(_stream(url) for _ in range(6)))
    assert all(_complete(events) for events in results)


async def test_sigterm_drains_every_worker(two_workers) -> None:
    process, url = two_workers
    started = [asyncio.Event() for _ in range(6)]
    streams = [asyncio.create_task(_stream(url, event)) for event in started]
    async with asyncio.timeout(10):
        for event in started:
            await event.wait()
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    during_delay = await _ready_statuses(url, 6)  # every worker still answers, not ready
    # then (drain.delay_s 1.5) no worker takes connections
    await wait_until(lambda: _refused(url), "the workers to stop accepting", 5)
    results = await asyncio.gather(*streams)
    assert during_delay
    assert set(during_delay) == {503}
    assert all(_complete(events) for events in results)
    # The parent exits as a single-process gateway does: "terminated by SIGTERM".
    assert await asyncio.to_thread(process.wait, 15) == -signal.SIGTERM
