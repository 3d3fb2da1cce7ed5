"""A real `sluice serve` process with 256 descriptors, under slow, idle and oversized
connections: `/health` keeps answering, memory and descriptors stay bounded, and the
gateway closes every bad connection once its read timeout passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import yaml

from loadtests.launch import free_port

NOFILE = 256
MAX_CONNECTIONS = 200
"""Below ``NOFILE`` by the gateway's own descriptors (listener, loop, logs) and margin."""
HEAD_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
RSS_MARGIN_KIB = 60 * 1024
"""Peak RSS may exceed the idle gateway's by this much. Measured: +2 to +24 MiB (61 MiB
idle). Without the limits the same connections took it to 200 MiB, most of it the four
16 MiB headers, and every descriptor (``/health`` went unanswered)."""
FD_MARGIN = 8
"""Descriptors the gateway may hold beyond its connection limit, or beyond its idle count
once the bad connections are gone."""

IDLE, HALF_LINE, DRIBBLED, STALLED, HUGE = 150, 60, 30, 20, 4
"""264 bad connections in all: more than the descriptors, when none were closed."""


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _limit_descriptors() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


Serve = Callable[..., Awaitable[tuple[subprocess.Popen[bytes], str]]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(workers, **limits)``: a `sluice serve` process limited to ``NOFILE``
    descriptors, answering ``/health``; its URL. Killed at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    async def start(workers: int = 1, **limits: object) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = tmp_path / f"gateway-{port}.yaml"
        config.write_text(yaml.safe_dump({
            "port": port, "workers": workers, "default_engine": False, "access_log": False,
            "log_level": "error", "limits": limits}))
        process = subprocess.Popen(  # noqa: ASYNC220 - kept as Popen so teardown can kill it
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_limit_descriptors)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http, asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url + "/health")).status_code == 200:
                        return process, url
                await asyncio.sleep(0.1)

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


async def _closed_by_gateway(reader: asyncio.StreamReader) -> None:
    """Returns once the gateway has closed the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def _bad_connection(port: int, kind: str) -> None:
    """One bad client, from connect until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            if kind == "half":
                writer.write(b"GET /hea")
            elif kind == "stalled":
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (4 * 1024 * 1024) + b" " * 1024 * 1024)
            elif kind in ("dribbled", "huge"):
                writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\nX-Big: ")
            await writer.drain()
            if kind == "dribbled":
                for i in range(1000):  # one line every 0.3 s: each well within the timeout
                    if reader.at_eof():
                        break
                    writer.write(b"1\r\nX-D%d: " % i)
                    await writer.drain()
                    await asyncio.sleep(0.3)
            elif kind == "huge":
                for _ in range(16 * 16):  # 16 MiB, in 64 KiB writes
                    writer.write(b"a" * 64 * 1024)
                    await writer.drain()
        await _closed_by_gateway(reader)
    finally:
        writer.close()


async def _probe_health(url: str, done: asyncio.Event, statuses: list[int]) -> None:
    """``/health`` on a new connection every 0.1 s (as a load balancer would) until
    ``done``; every status, or 0 for no answer within 5 s."""
    while not done.is_set():
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                statuses.append((await http.get(url + "/health")).status_code)
        except httpx.TransportError:
            statuses.append(0)
        await asyncio.sleep(0.1)


async def _sample(pid: int, done: asyncio.Event, peak_fds: list[int]) -> None:
    while not done.is_set():
        peak_fds[0] = max(peak_fds[0], _open_fds(pid))
        await asyncio.sleep(0.05)


async def test_bad_connections_leave_health_memory_and_descriptors_bounded(serve) -> None:
    process, url = await serve(max_connections=MAX_CONNECTIONS, header_timeout_s=HEAD_TIMEOUT_S,
                               body_timeout_s=BODY_TIMEOUT_S)
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient() as http:  # warm: the first requests import and allocate
        for _ in range(20):
            assert (await http.get(url + "/health")).status_code == 200
    base_rss, base_fds = _proc_kib(process.pid, "VmRSS"), _open_fds(process.pid)

    done = asyncio.Event()
    statuses: list[int] = []
    peak_fds = [base_fds]
    watchers = [asyncio.create_task(_probe_health(url, done, statuses)),
                asyncio.create_task(_sample(process.pid, done, peak_fds))]
    kinds = (["huge"] * HUGE + ["stalled"] * STALLED + ["dribbled"] * DRIBBLED
             + ["half"] * HALF_LINE + ["idle"] * IDLE)
    bad: list[Awaitable[None]] = [_bad_connection(port, kind) for kind in kinds]
    try:
        # Every bad connection must be closed by the gateway: the longest-lived, a
        # dribbled head, ends at HEAD_TIMEOUT_S; 15 s is a generous bound.
        async with asyncio.timeout(15):
            await asyncio.gather(*bad)
    finally:
        done.set()
        await asyncio.gather(*watchers)

    peak_rss = _proc_kib(process.pid, "VmHWM")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url + "/health")).status_code == 200
    after_fds = _open_fds(process.pid)
    print(f"RSS {base_rss} KiB idle, {peak_rss} KiB peak; descriptors {base_fds} idle, "
          f"{peak_fds[0]} peak, {after_fds} after; {len(statuses)} /health probes")
    assert statuses
    assert set(statuses) == {200}
    assert peak_rss <= base_rss + RSS_MARGIN_KIB
    assert peak_fds[0] <= MAX_CONNECTIONS + base_fds + FD_MARGIN < NOFILE
    assert after_fds <= base_fds + FD_MARGIN


async def test_every_worker_applies_the_limits(serve) -> None:
    """With ``workers: 2`` each worker process runs the protocol with the settings'
    limits: whichever worker the kernel hands a connection to answers 408 and 431."""
    _, url = await serve(workers=2, header_timeout_s=0.5, max_headers=10)
    port = int(url.rsplit(":", 1)[1])
    for _ in range(4):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10):
                assert (await reader.read()).startswith(b"HTTP/1.1 408 ")
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\n" + b"X-H: 1\r\n" * 11 + b"\r\n")
            async with asyncio.timeout(10):
                assert (await reader.read()).startswith(b"HTTP/1.1 431 ")
        finally:
            writer.close()
