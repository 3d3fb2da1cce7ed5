"""SDK client fixtures: one gateway in front of one simulator, for each test."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from starlette.routing import BaseRoute

from simulator import SimConfig
from tests.integration.conftest import start_sim  # noqa: F401 - simulators, as there

MODEL = "sim-model"
SLOW = SimConfig(prefill_base_ms=2, decode_step_ms=25)
"""Slow enough that a 2,000-token answer is still running when a client stops it."""


@dataclass(frozen=True)
class Through:
    """A gateway (``url``, with its ``routes``) in front of one simulator (``sim``)."""

    url: str
    sim: str
    routes: list[BaseRoute]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def serves(self, path: str) -> bool:
        return any(getattr(route, "path", None) == path for route in self.routes)


@pytest.fixture
async def through(start_sim, start_gateway, gateway_apps) -> Through:  # noqa: F811
    sim = await start_sim(SLOW)
    url = await start_gateway([sim])
    return Through(url, sim, list(gateway_apps[url].routes))
