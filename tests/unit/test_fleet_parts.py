"""Admission limits, the engine load scrape parser, relay usage shifting, drain."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from engines.load import EngineLoad, parse_load
from gateway.drain import Drain
from gateway.errors import Overloaded
from gateway.fleet_settings import AdmissionSettings
from gateway.metrics import GatewayMetrics
from gateway.services.admission import Admission
from gateway.services.relay import SSERelay


def test_admission_limit_scales_with_healthy_engines() -> None:
    admission = Admission(AdmissionSettings(max_in_flight_per_engine=2))
    for _ in range(4):
        admission.enter("m", healthy_engines=2)
    with pytest.raises(Overloaded) as refused:
        admission.enter("m", healthy_engines=2)
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    admission.enter("m", healthy_engines=3)  # a third engine came back: room for two more
    admission.leave("m")
    assert admission.in_flight("m") == 4


def test_admission_per_model_limit_and_no_engine() -> None:
    admission = Admission(AdmissionSettings(models={"small": 1}, retry_after_s=7))
    admission.enter("small", healthy_engines=5)
    with pytest.raises(Overloaded) as refused:
        admission.enter("small", healthy_engines=5)
    assert refused.value.headers["Retry-After"] == "7"
    admission.enter("other", healthy_engines=0)  # routing answers 503 for this one
    admission.leave("small")
    admission.leave("other")
    assert admission.in_flight("small") == admission.in_flight("other") == 0


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


def test_relay_shifts_usage_of_a_continued_stream() -> None:
    relay = SSERelay(forward_usage=True, keep=True)
    relay.usage_shift = 5
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 7,
                                                  "total_tokens": 37}}
    out = relay.feed(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
    forwarded = orjson.loads(out.split(b"\n\n")[0][6:])["usage"]
    assert forwarded == {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37}
    assert (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (25, 12)
    assert relay.kept == [out]
    assert relay.done


def test_relay_restart_drops_a_partial_event() -> None:
    relay = SSERelay(forward_usage=False)
    assert relay.feed(b'data: {"choices":[{"delta":{"content":"hal') == b""
    relay.restart()
    assert relay.feed(b'data: {"a":1}\n\n') == b'data: {"a":1}\n\n'
    assert relay.kept is None


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
