"""`sluice serve` with `workers: 2`: one `/metrics` scrape counts every worker's requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimConfig
from tests.integration.helpers import two_worker_gateway

CHAT = {"model": "sim-model", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]}
REQUESTS = 40


@pytest.fixture
async def two_workers(tmp_path: Path, start_sim) -> AsyncIterator[str]:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    # TMPDIR: the workers' metrics sockets land under tmp_path, where the test reads them.
    async with two_worker_gateway(tmp_path, sim, env={"TMPDIR": str(tmp_path)}) as (_, url):
        yield url


async def _chat(url: str) -> None:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 200


def _requests_total(families: dict[str, list[tuple[str, dict[str, str], float]]]) -> float:
    return sum(value for name, _, value in families.get("sluice_requests", [])
               if name == "sluice_requests_total")


async def _worker_requests(socket_path: Path) -> float:
    """One worker's own request count, read from its metrics socket."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        data = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    found = {name: samples for name, _, _, samples in orjson.loads(data)}
    return _requests_total(found)


async def test_every_scrape_counts_every_workers_requests(two_workers: str,
                                                          tmp_path: Path) -> None:
    url = two_workers
    for _ in range(REQUESTS // 10):
        await asyncio.gather(*(_chat(url) for _ in range(10)))
    scraped_by: set[int] = set()
    for _ in range(12):
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(url + "/metrics")  # the same connection, the same worker:
            scraped_by.add((await http.get(url + "/ready")).json()["pid"])
        assert response.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        requests = sum(s.value for s in families["sluice_requests"].samples
                       if s.name == "sluice_requests_total")
        assert requests == REQUESTS
        durations = families["sluice_request_duration_seconds"].samples
        assert sum(s.value for s in durations if s.name.endswith("_count")) == REQUESTS
        circuits = families["sluice_engine_circuit_state"].samples
        assert sorted(s.labels["worker"] for s in circuits) == ["0", "1"]
        assert all(s.value == 0 for s in families["sluice_requests_in_flight"].samples)
    assert len(scraped_by) == 2  # (on one connection: /ready names the worker that scraped)
    # Both workers served some of the requests (each one's own count, from its socket).
    found = await asyncio.to_thread(lambda: list(tmp_path.glob("sluice-metrics-*/*.sock")))
    sockets = sorted(found)
    assert [p.name for p in sockets] == ["0.sock", "1.sock"]
    own = [await _worker_requests(path) for path in sockets]
    assert sum(own) == REQUESTS
    assert min(own) > 0
