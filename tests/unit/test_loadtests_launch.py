"""loadtests.launch: environments, readiness bodies, and processes started and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from loadtests.launch import (
    Launch,
    LaunchError,
    all_engines_healthy,
    environment,
    free_port,
    launched,
    redis_launch,
    redis_server,
    spawn,
    stop,
)


def test_environment_applies_changes_and_removals() -> None:
    base = {"A": "1", "B": "2"}
    assert environment(base, {"A": None, "C": "3"}) == {"B": "2", "C": "3"}
    assert base == {"A": "1", "B": "2"}


def test_all_engines_healthy_reads_the_gateways_ready_body() -> None:
    def body(*healthy: bool) -> bytes:
        return json.dumps({"status": "ready",
                           "engines": [{"name": str(i), "healthy": h}
                                       for i, h in enumerate(healthy)]}).encode()

    assert all_engines_healthy(body(True, True))
    assert not all_engines_healthy(body(True, False))


SERVER = ("import http.server, sys; http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), "
          "http.server.SimpleHTTPRequestHandler).serve_forever()")


async def test_launched_waits_until_ready_and_stops_the_process(tmp_path: Path) -> None:
    port = free_port()
    launch = Launch([sys.executable, "-c", SERVER, str(port)], f"http://127.0.0.1:{port}",
                    tmp_path / "server.log", ready_path="/")
    async with launched(launch, ready_timeout_s=20) as process:
        assert process.poll() is None
    assert process.returncode is not None


async def test_a_process_that_exits_early_fails_with_its_log(tmp_path: Path) -> None:
    launch = Launch([sys.executable, "-c", "print('no luck'); raise SystemExit(3)"],
                    f"http://127.0.0.1:{free_port()}", tmp_path / "early.log")
    with pytest.raises(LaunchError, match=r"exited with 3(?s:.*)no luck"):
        async with launched(launch, ready_timeout_s=20):
            pass


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    ignore = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")
    log = tmp_path / "stubborn.log"
    process = spawn(Launch([sys.executable, "-c", ignore], "http://unused", log))
    while "ready" not in log.read_text():
        assert process.poll() is None
        time.sleep(0.05)
    stop(process, grace_s=0.2)
    assert process.returncode == -9


@pytest.fixture
def redis_on_path() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")


@pytest.mark.usefixtures("redis_on_path")
async def test_redis_server_answers_without_persistence_then_is_stopped(
        tmp_path: Path) -> None:
    async with redis_server(tmp_path) as url:
        client = redis.asyncio.Redis.from_url(url)
        try:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            await client.aclose()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", urlsplit(url).port)
    files = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert files == ["redis.log"]  # no dump, no append-only file


def test_redis_launch_needs_redis_server_on_the_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="redis-server is not on the PATH"):
        redis_launch(tmp_path)
