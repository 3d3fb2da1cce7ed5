"""Fixtures shared by every test layer: a real gateway on an ephemeral port, simulator
processes, and the real stack (``sluice serve`` with a vLLM CPU engine) that the e2e and
browser tests share, started once per session."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config.settings import EngineConfig, Settings
from gateway.edge.gate import Edge
from gateway.edge.server import GatewayServer
from loadtests.launch import LaunchError, free_port
from loadtests.stack import CACHE, ENGINE_PYTHON, MODEL_DIR, RealStack, real_stack
from tests.redis_sentinel import SentinelSet
from tests.redis_server import RedisServer

StartGateway = Callable[..., Awaitable[str]]


@pytest.fixture
def gateway_apps() -> dict[str, Edge]:
    """The app behind each URL ``start_gateway`` returned (e.g. ``app.state.drain``)."""
    return {}


@pytest.fixture
async def start_gateway(gateway_apps: dict[str, Edge]) -> AsyncIterator[StartGateway]:
    """Start gateways in this event loop: ``await start_gateway(engines=[url, ...], **settings)``
    returns the base URL (``http=`` picks another uvicorn HTTP protocol class). Each runs
    a real uvicorn server on a free port; all are shut down (lifespan included) at
    teardown. ``gateway_apps[url]`` is its app."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(engines: list[str | EngineConfig] | None = None, *, http: Any = None,
                    **overrides: Any) -> str:
        configs = [EngineConfig(name=f"e{i}", url=url) if isinstance(url, str) else url
                   for i, url in enumerate(engines or [])]
        fields: dict[str, Any] = {"port": 0, "default_engine": False, "access_log": False,
                                  "health_interval_s": 0.2, "engines": configs}
        settings = Settings(**{**fields, **overrides})
        app = create_app(settings)
        server = GatewayServer(app, settings, host="127.0.0.1", port=0)
        if http is not None:  # another uvicorn HTTP protocol class
            server.config.http = http
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        gateway_apps[url] = app
        return url

    yield start
    for server, _ in running:
        server.should_exit = True
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)


class SimProcess:
    """A simulator engine in its own process, so a test can kill it like a crash."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
async def spawn_sim() -> AsyncIterator[Callable[..., Awaitable[SimProcess]]]:
    """``await spawn_sim(*cli_args)``: a simulator process on a free port, ready to serve."""
    started: list[SimProcess] = []

    async def spawn(*args: str) -> SimProcess:
        port = free_port()
        process = subprocess.Popen(  # noqa: ASYNC220 - kept as Popen so teardown can kill it
            [sys.executable, "-m", "simulator", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sim = SimProcess(process, f"http://127.0.0.1:{port}")
        started.append(sim)
        async with httpx.AsyncClient() as http, asyncio.timeout(20):
            while True:
                try:
                    if (await http.get(sim.url + "/health")).status_code == 200:
                        return sim
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"simulator exited with {process.returncode}")
                await asyncio.sleep(0.1)

    yield spawn
    for sim in started:
        if sim.process.poll() is None:
            sim.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test's own on a free port (never 6379), without
    persistence, killed at teardown. Skipped locally without redis-server (``make test``
    installs it); in CI that fails."""
    yield from _redis(RedisServer(tmp_path))


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Like ``redis_server``, with an append-only file written before each answer: what
    it held is there again after a kill and a start."""
    yield from _redis(RedisServer(tmp_path, persist=True))


@pytest.fixture
def redis_sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels (quorum 2, a primary down for 1 s is
    failed over), all killed at teardown; ``.url`` is the ``redis+sentinel://`` URL."""
    sentinels = SentinelSet(tmp_path)
    try:
        sentinels.start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    except BaseException:
        sentinels.stop()
        raise
    yield sentinels
    sentinels.stop()


def _redis(server: RedisServer) -> Iterator[RedisServer]:
    try:
        server.start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.kill()


TEST_LORA = CACHE / "adapters" / "sluice-test-lora"


def _require(path: Path, how: str) -> None:
    if path.exists():
        return
    message = f"{path} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The gateway and its managed engine, started once for the whole session; stopping
    the gateway must stop the engine (checked at teardown). The engine virtualenv and the
    default model come from ``make engine model`` (``make test`` runs both); without them
    the tests that use it are skipped locally and fail in CI."""
    _require(ENGINE_PYTHON, "run `make engine`")
    _require(MODEL_DIR / ".sluice-ready", "run `make model`")
    _require(TEST_LORA / ".sluice-ready", "run `make model`")
    try:
        with real_stack(tmp_path_factory.mktemp("e2e") / "gateway.log") as running:
            yield running
    except LaunchError as exc:
        pytest.fail(str(exc))
