"""Admission limits, the engine load scrape parser, drain."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.fleet import AdmissionSettings
from gateway.core.errors import Overloaded
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.admission import Admission
from gateway.pipeline.drain import Drain
from gateway.stores.memory import MemoryCounters
from gateway.upstream.load import EngineLoad, parse_load


async def test_admission_limit_scales_with_healthy_engines() -> None:
    admission = Admission(AdmissionSettings(max_in_flight_per_engine=2), MemoryCounters())
    for _ in range(4):
        assert await admission.enter("m", healthy_engines=2)
    with pytest.raises(Overloaded) as refused:
        await admission.enter("m", healthy_engines=2)
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    await admission.enter("m", healthy_engines=3)  # a third engine came back: two more
    await admission.leave("m")
    assert await admission.in_flight("m") == 4


async def test_admission_per_model_limit_and_no_engine() -> None:
    admission = Admission(AdmissionSettings(models={"small": 1}, retry_after_s=7),
                          MemoryCounters())
    assert await admission.enter("small", healthy_engines=5)
    with pytest.raises(Overloaded) as refused:
        await admission.enter("small", healthy_engines=5)
    assert refused.value.headers["Retry-After"] == "7"
    # With no healthy engine nothing is counted: routing answers 503 for this one.
    assert not await admission.enter("other", healthy_engines=0)
    await admission.leave("small")
    assert await admission.in_flight("small") == await admission.in_flight("other") == 0


VLLM_PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 3.0
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2"} 1024.0
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2"} 512.0
vllm:prefix_cache_hits_created{engine="0",model_name="smollm2"} 1.7e9
vllm:num_requests_running{engine="0",model_name="lora"} 1.0
vllm:num_requests_running 1e400
vllm:broken{x="1"} nan
"""


def test_parse_load_sums_labels_and_skips_other_series() -> None:
    load = parse_load(VLLM_PAGE)
    assert load == EngineLoad(running=4.0, waiting=2.0, kv_usage=0.25,
                              prefix_queries=1024.0, prefix_hits=512.0)
    assert load.queued == 6.0
    assert parse_load(b"") == EngineLoad()


async def test_drain_closes_open_streams_at_the_deadline() -> None:
    metrics = GatewayMetrics()
    drain = Drain(0.05, metrics)
    closed: list[str] = []
    finished = drain.register(lambda: closed.append("finished"))
    drain.register(lambda: closed.append("running"))
    drain.unregister(finished)
    drain.begin()
    assert drain.draining
    assert not drain.expired
    assert b"sluice_draining 1.0" in metrics.render()
    await asyncio.sleep(0.1)
    assert drain.expired
    assert closed == ["running"]
    drain.register(lambda: closed.append("late"))  # after the deadline: closed at once
    assert closed == ["running", "late"]


async def test_drain_announces_first_and_tells_sessions_when_it_begins() -> None:
    metrics = GatewayMetrics()
    drain = Drain(30, metrics)
    told: list[str] = []
    early = drain.on_begin(lambda: told.append("early"))
    gone = drain.on_begin(lambda: told.append("gone"))
    drain.unregister(gone)
    drain.announce()
    assert drain.announced
    assert not drain.draining  # not ready, yet still serving
    assert b"sluice_draining 1.0" in metrics.render()
    assert told == []
    drain.begin()
    assert drain.draining
    assert told == ["early"]
    drain.on_begin(lambda: told.append("late"))  # after the drain began: told at once
    assert told == ["early", "late"]
    drain.unregister(early)
    drain.cancel()
