"""Integration fixtures. Simulator fixtures: `start_sim` (factory) and `sim_server`;
`start_fake_engine` for scripted answers the simulator never gives; `serve_gateway` for
`sluice serve` processes on a shared redis-server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config.settings import PoolSettings, TimeoutSettings
from gateway.upstream.http1 import Http1Transport
from loadtests.launch import free_port
from simulator import SimConfig, SimServer
from tests.integration.fake_engine import FakeEngine, Reply
from tests.integration.helpers import wait_until
from tests.integration.raw_engine import Answer, Engine

StartSim = Callable[..., Awaitable[str]]
"""`await start_sim(config: SimConfig | None = None) -> base_url`"""
StartFakeEngine = Callable[..., Awaitable[FakeEngine]]

FAST_SIM = SimConfig(prefill_base_ms=2.0, decode_step_ms=2.0)
"""A quick engine for functional tests: 2 ms prefill, 2 ms per token."""


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators on free ports in this process; all are closed at teardown.

    `await start_sim(SimConfig(...))` returns the base URL (`http://127.0.0.1:PORT`).
    Reaching `crash_after_tokens` does not kill the test process: the simulator stops
    listening and resets its connections, as a dead engine would look to clients.
    """
    servers: list[SimServer] = []

    async def start(config: SimConfig | None = None) -> str:
        server = SimServer(config if config is not None else FAST_SIM)
        await server.start()
        servers.append(server)
        return server.base_url

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def sim_server(start_sim: StartSim) -> str:
    """Base URL of one fast simulator (`FAST_SIM`)."""
    return await start_sim(FAST_SIM)


@pytest.fixture
async def start_fake_engine() -> AsyncIterator[StartFakeEngine]:
    """`await start_fake_engine(reply, paths=(...))`: a started :class:`FakeEngine`
    (``.url``) that also answers those POST paths with ``reply``."""
    engines: list[FakeEngine] = []

    async def start(reply: Reply, paths: tuple[str, ...] = ()) -> FakeEngine:
        engine = FakeEngine(reply, paths=paths)
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.close()


ServeGateway = Callable[..., Awaitable[str]]
"""`await serve_gateway(engines, redis_url, **settings)`: a ready gateway process; its URL."""


@pytest.fixture
def gateway_processes() -> dict[str, subprocess.Popen[bytes]]:
    """The process behind each URL ``serve_gateway`` returned (to kill one, or its pid)."""
    return {}


@pytest.fixture
async def serve_gateway(tmp_path: Path, gateway_processes: dict[str, subprocess.Popen[bytes]]
                        ) -> AsyncIterator[ServeGateway]:
    """``sluice serve`` processes with engines ``e0``, ``e1``, ... and ``redis.url``
    (``redis={...}`` adds Redis settings); each logs to ``gateway-<port>.log`` in the
    test's directory. All are killed at teardown."""
    async def start(engines: list[str], redis_url: str, /, **overrides: Any) -> str:
        port = free_port()
        config = tmp_path / f"gateway-{port}.yaml"
        config.write_text(yaml.safe_dump({
            "port": port, "default_engine": False, "access_log": False,
            "engines": [{"name": f"e{i}", "url": url} for i, url in enumerate(engines)],
            **overrides, "redis": {"url": redis_url, **overrides.get("redis", {})}}))
        with (tmp_path / f"gateway-{port}.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - Popen so that a test can kill it
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        gateway_processes[url] = process

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(url + "/ready")).status_code == 200
            except httpx.TransportError:
                return process.poll() is not None  # exited: fail below, not by timeout

        await wait_until(ready, "the gateway to be ready", timeout_s=30)
        assert process.poll() is None, "the gateway exited"
        return url

    yield start
    for process in gateway_processes.values():
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


StartRawEngine = Callable[[Answer], Awaitable[Engine]]


@pytest.fixture
async def start_raw_engine() -> AsyncIterator[StartRawEngine]:
    """`await start_raw_engine(answer)`: a started raw HTTP/1.1 :class:`Engine` (``.url``)
    answering each request with ``answer``; closed at teardown."""
    engines: list[Engine] = []

    async def start(answer: Answer) -> Engine:
        engines.append(await Engine(answer).start())
        return engines[-1]

    yield start
    for engine in engines:
        await engine.close()


@pytest.fixture
async def http1_transport() -> AsyncIterator[Http1Transport]:
    """The production transport with default settings; closed at teardown."""
    transport = Http1Transport(PoolSettings(), TimeoutSettings())
    yield transport
    await transport.aclose()
