"""What engines say of their load on ``/metrics`` reaches routing: the pool's real health
check and scrape over the in-memory transport, then the scheduler picks from the pool."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config.settings import EngineConfig, TimeoutSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.client import EngineClient
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport
from gateway.upstream.pool import EnginePool
from tests.unit.scheduling.fakes import Harness

MODELS = orjson.dumps({"object": "list", "data": [{"id": "m", "max_model_len": 2048}]})


def vllm_metrics(*, running: float, waiting: float, kv: float) -> bytes:
    """A ``/metrics`` page as vLLM writes it (the series the gateway reads among others)."""
    labels = '{engine="0",model_name="m"}'
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{labels} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{labels} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{labels} {kv}
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{labels} 4096.0
vllm:prefix_cache_hits_total{labels} 1024.0
vllm:num_preemptions_total{labels} 0.0
""".encode()


async def scraped_pool(pages: dict[str, bytes]) -> EnginePool:
    """A pool of the engines named in ``pages`` (in that order), health-checked and
    scraped once through its own code; each engine's ``/metrics`` answers its page."""

    async def engine(request: MemoryRequest) -> MemoryResponse:
        name, path = request.url.split("//")[1].split("/", 1)
        answers = {"health": b"", "v1/models": MODELS, "metrics": pages[name]}
        return MemoryResponse(200, answers[path])

    transport = MemoryTransport(engine)
    pool = EnginePool([EngineConfig(name=n, url=f"http://{n}") for n in pages],
                      lambda c: EngineClient(c.name, c.base_url, transport, TimeoutSettings()),
                      GatewayMetrics(), health_interval_s=1)
    await pool.refresh()
    await pool.scrape()
    assert sum(r.url.endswith("/metrics") for r in transport.requests) == len(pages)
    return pool


def profile(scorer: str) -> dict[str, Any]:
    return {"profiles": {"only": {"scorers": {scorer: 1.0}}}, "default": {"profile": "only"}}


KV_CACHE = {"a": {"running": 1, "waiting": 0, "kv": 0.9},
            "b": {"running": 1, "waiting": 0, "kv": 0.2},
            "c": {"running": 1, "waiting": 0, "kv": 0.5}}
QUEUES = {"a": {"running": 4, "waiting": 0, "kv": 0.1},  # Only running + waiting puts b
          "b": {"running": 2, "waiting": 1, "kv": 0.1},  # lowest: without waiting c would
          "c": {"running": 0, "waiting": 5, "kv": 0.1}}  # be, without running a.


@pytest.mark.parametrize(("scorer", "reason", "pages"), [
    ("kv_cache", "kv", KV_CACHE), ("least_loaded", "least_loaded", QUEUES)],
    ids=["the least KV cache in use", "the fewest running plus waiting"])
async def test_the_engine_the_scrape_shows_least_busy_is_picked(
        scorer: str, reason: str, pages: dict[str, dict[str, Any]]) -> None:
    pool = await scraped_pool({name: vllm_metrics(**page) for name, page in pages.items()})
    h = Harness(**profile(scorer))
    picks = [h.pick(pool.engines) for _ in range(3)]  # equal scores would take turns
    assert [(p.engine.name, p.reason) for p in picks] == [("b", reason)] * 3
