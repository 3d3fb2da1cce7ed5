"""Starting and stopping server processes: the one place the harness launches anything.

A ``Launch`` says how to start a server (argv, environment changes, log file) and where
it answers. ``spawn`` starts it in its own process group (stopping the group stops what
it spawned, as vLLM's engine core) that gets SIGTERM if this process dies first;
``wait_ready`` polls its ready path; ``stop`` sends SIGTERM and SIGKILL after a grace
period; ``kill`` is a crash. ``launched`` does all of it around an ``async with`` block::

    async with launched(Launch(argv, url, log), ready_timeout_s=30) as process:
        ...

``redis_server`` is a ``redis-server`` of the run's own, started and stopped the same way
(ready once it answers ``PING``). Ports come from ``free_port``; every process runs in
the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engines.lifetime import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STOP_GRACE_S = 20.0
"""How long a process has between SIGTERM and SIGKILL, unless told otherwise."""
NO_DRAIN_DELAY = {"SLUICE_DRAIN__DELAY_S": "0"}
"""The environment of a gateway the harness starts: no load balancer stands in front of
it, so on SIGTERM it need not stay up for one to notice (``drain.delay_s``; a checkout
without that setting ignores the variable)."""


class LaunchError(RuntimeError):
    """A process did not start or did not become ready (its log tail is in the message)."""


@dataclass(frozen=True)
class Launch:
    """How to start one server process, and where it answers."""

    argv: list[str]
    url: str
    log: Path | None = None
    env: Mapping[str, str | None] | None = None
    """Changes to the inherited environment; None removes a variable."""
    ready_path: str = "/health"


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def environment(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``base`` with ``changes`` applied: a None value removes that variable."""
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def spawn(launch: Launch) -> subprocess.Popen[bytes]:
    """Start ``launch`` in its own process group, output to its log (or nowhere)."""
    env = environment(os.environ, launch.env or {})
    out: Any = subprocess.DEVNULL
    if launch.log is not None:
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        out = launch.log.open("ab")
    try:
        return subprocess.Popen(launch.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


async def wait_ready(launch: Launch, process: subprocess.Popen[bytes], timeout_s: float, *,
                     all_engines: bool = False) -> None:
    """Poll ``launch.url + launch.ready_path`` until it answers 200 (and, with
    ``all_engines``, lists every engine healthy); LaunchError if the process exits first
    or ``timeout_s`` passes."""
    url = launch.url + launch.ready_path
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LaunchError(f"{launch.argv[:4]} exited with {process.returncode}"
                                  f"{_tail(launch.log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, allow_redirects=False) as response:
                    body = await response.read()
                    if response.status == 200 and (not all_engines or all_engines_healthy(body)):
                        return
            await asyncio.sleep(0.2)
    raise LaunchError(f"{url} not ready after {timeout_s:.0f} s{_tail(launch.log)}")


def all_engines_healthy(ready_body: bytes) -> bool:
    """Whether the gateway's ``/ready`` body reports every engine healthy."""
    engines = json.loads(ready_body).get("engines") or []
    return all(engine.get("healthy") for engine in engines)


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it if the process still runs ``grace_s`` later."""
    stop_all([process], grace_s)


def stop_all(processes: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """``stop`` these processes together: all get SIGTERM, then share the grace period."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(process)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group, like a crash; returns once the process is gone."""
    _signal_group(process, signal.SIGKILL)
    process.wait()


@asynccontextmanager
async def launched(launch: Launch, *, ready_timeout_s: float, all_engines: bool = False,
                   grace_s: float = STOP_GRACE_S) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Start ``launch``, yield its process once ready (see ``wait_ready``), ``stop`` it
    when the block ends, however it ends."""
    process = spawn(launch)
    try:
        await wait_ready(launch, process, ready_timeout_s, all_engines=all_engines)
        yield process
    finally:
        stop(process, grace_s)


def redis_launch(log_dir: Path) -> Launch:
    """``redis-server`` on a free port without persistence (``--save ''``,
    ``--appendonly no``), working and logging in ``log_dir``; ``url`` is its
    ``redis://`` URL. LaunchError when no ``redis-server`` is on the PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise LaunchError("redis-server is not on the PATH")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(log_dir)]
    return Launch(argv, f"redis://{HOST}:{port}/0", log_dir / "redis.log")


async def wait_pong(launch: Launch, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Send ``PING`` to the Redis at ``launch.url`` until it answers ``+PONG``;
    LaunchError if the process exits first or ``timeout_s`` passes."""
    port = urlsplit(launch.url).port
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"{launch.argv[:1]} exited with {process.returncode}"
                              f"{_tail(launch.log)}")
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(b"PING\r\n")
                if (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"+PONG"):
                    return
            finally:
                writer.close()
                await writer.wait_closed()
        await asyncio.sleep(0.05)
    raise LaunchError(f"{launch.url} not ready after {timeout_s:.0f} s{_tail(launch.log)}")


@asynccontextmanager
async def redis_server(log_dir: Path, *, ready_timeout_s: float = 10.0) -> AsyncIterator[str]:
    """A ``redis-server`` of the run's own (``redis_launch``); yields its URL once it
    answers; stopped (``stop``) when the block ends, and what it held is gone."""
    launch = redis_launch(log_dir)
    process = spawn(launch)  # creates log_dir, the log's folder
    try:
        await wait_pong(launch, process, ready_timeout_s)
        yield launch.url
    finally:
        stop(process)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return f" (log {log}):\n" + log.read_text(errors="replace")[-3000:]


