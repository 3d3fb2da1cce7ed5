"""Merging several workers' metrics (gateway.observability.worker_metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import worker_metrics
from gateway.observability.metrics import WORKER_GAUGE_MODES, GatewayMetrics
from gateway.observability.worker_metrics import WorkerPeers, families, render_merged


def _worker(requests: int, in_flight: int, queue: int, circuit: int | None,
            up: int) -> GatewayMetrics:
    metrics = GatewayMetrics()
    chat = metrics.version("chat", "none")
    chat.requests("sim", "chat", "200").inc(requests)
    chat.ttft.observe(0.02)
    chat.in_flight.inc(in_flight)
    metrics.engine_queue.labels("sim", "waiting").set(queue)
    if circuit is not None:
        metrics.circuit_state.labels("sim").set(circuit)
    metrics.engine_up.labels("sim").set(up)
    return metrics


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_one_worker_merged_reads_as_its_own_exposition() -> None:
    metrics = _worker(3, 1, 4, None, 1)  # (no per-worker gauge: that one gains a label)
    merged = render_merged([(0, families(metrics.registry))])
    assert merged == metrics.render()


def test_counters_and_histograms_sum_and_gauges_follow_their_mode() -> None:
    one, two = _worker(3, 1, 4, 0, 1), _worker(5, 2, 7, 1, 0)
    values = _values(render_merged([(0, families(one.registry)),
                                    (1, families(two.registry))]))
    chat = (("model", "chat"), ("version", "none"))
    assert values[("sluice_requests_total", (("endpoint", "chat"), ("engine", "sim"),
                                             ("model", "chat"), ("status", "200"),
                                             ("version", "none")))] == 8
    assert values[("sluice_time_to_first_token_seconds_count", chat)] == 2
    assert values[("sluice_time_to_first_token_seconds_bucket",
                   (("le", "0.025"), *chat))] == 2
    assert values[("sluice_requests_in_flight", chat)] == 3  # sum
    assert values[("sluice_engine_requests", (("engine", "sim"), ("state", "waiting")))] == 7
    assert values[("sluice_engine_up", (("engine", "sim"),))] == 0  # min
    assert values[("sluice_engine_circuit_state", (("engine", "sim"), ("worker", "0")))] == 0
    assert values[("sluice_engine_circuit_state", (("engine", "sim"), ("worker", "1")))] == 1
    created = [v for (name, _), v in values.items() if name == "sluice_requests_created"]
    assert len(created) == 1  # the earliest of the two


def test_every_gauge_mode_names_a_gauge() -> None:
    gauges = {m.name for m in GatewayMetrics().registry.collect() if m.type == "gauge"}
    assert set(WORKER_GAUGE_MODES) == gauges


async def test_each_worker_answers_every_workers_series(tmp_path: Path) -> None:
    one, two = _worker(3, 0, 4, 0, 1), _worker(5, 0, 7, 1, 1)
    peers = [WorkerPeers(one, tmp_path, 0, 2), WorkerPeers(two, tmp_path, 1, 2)]
    for peer in peers:
        await peer.start()
    try:
        first, second = [_values(await peer.render()) for peer in peers]
    finally:
        for peer in peers:
            await peer.close()
    assert first == second
    assert sum(v for (name, _), v in first.items() if name == "sluice_requests_total") == 8
    assert not await asyncio.to_thread(lambda: list(tmp_path.iterdir()))  # sockets removed


async def test_a_silent_worker_is_left_out_within_the_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker_metrics, "PEER_TIMEOUT_S", 0.2)
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = await asyncio.start_unix_server(silent, path=str(tmp_path / "1.sock"))
    own = WorkerPeers(_worker(3, 0, 4, 0, 1), tmp_path, 0, 3)  # worker 2: no socket at all
    try:
        async with asyncio.timeout(2):
            values = _values(await own.render())
    finally:
        hold.set()
        server.close()
        await server.wait_closed()
    assert sum(v for (name, _), v in values.items() if name == "sluice_requests_total") == 3
    assert "worker 1's metrics left out" in caplog.text
    assert "worker 2's metrics left out" in caplog.text
