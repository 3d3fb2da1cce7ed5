"""Integration fixtures. Simulator fixtures: `start_sim` (factory) and `sim_server`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from simulator import SimConfig, SimServer

StartSim = Callable[..., Awaitable[str]]
"""`await start_sim(config: SimConfig | None = None) -> base_url`"""

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
