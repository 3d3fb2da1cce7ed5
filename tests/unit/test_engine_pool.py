"""The engine pool's background checks through the in-memory transport."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.config.settings import EngineConfig, TimeoutSettings
from gateway.core.errors import EngineUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.upstream.client import EngineClient
from gateway.upstream.load import EngineLoad
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport
from gateway.upstream.pool import EnginePool
from gateway.versions import VersionsSettings

MODELS = orjson.dumps({"object": "list", "data": [{"id": "m", "max_model_len": 64}]})


class Engines:
    """Two scripted engines whose /v1/models and /metrics answers tests change."""

    def __init__(self) -> None:
        self.models = {"a": MODELS, "b": MODELS}
        self.prefix_queries = {"a": 0, "b": 0}
        self.transport = MemoryTransport(self.answer)

    async def answer(self, request: MemoryRequest) -> MemoryResponse:
        engine, path = request.url.split("//")[1].split("/", 1)
        if path == "health":
            return MemoryResponse(200, b"")
        if path == "v1/models":
            return MemoryResponse(200, self.models[engine])
        page = f"vllm:prefix_cache_queries_total {self.prefix_queries[engine]}\n"
        return MemoryResponse(200, page.encode())

    def pool(self, metrics: GatewayMetrics | None = None, **options: Any) -> EnginePool:
        return EnginePool(
            [EngineConfig(name=n, url=f"http://{n}") for n in ("a", "b")],
            lambda c: EngineClient(c.name, c.base_url, self.transport, TimeoutSettings()),
            metrics or GatewayMetrics(), health_interval_s=1, **options)


def models(*names: str) -> bytes:
    return orjson.dumps({"object": "list", "data": [{"id": n} for n in names]})


def info(metrics: GatewayMetrics) -> set[tuple[str, str, str]]:
    """The ``sluice_engine_info`` series set to 1, as (engine, model, version)."""
    return {(s.labels["engine"], s.labels["model"], s.labels["version"])
            for family in metrics.registry.collect() if family.name == "sluice_engine_info"
            for s in family.samples if s.value == 1}


async def test_engine_info_names_each_model_and_alias_version_an_engine_serves() -> None:
    engines = Engines()
    served_as = VersionsSettings.model_validate({"aliases": {"chat": {"versions": {
        "v1": {"model": "m"}, "v2": {"model": "m", "adapter": "lora"}}}}}).served_as()
    metrics = GatewayMetrics()
    pool = engines.pool(metrics, served_as=served_as)
    engines.models["b"] = models("m", "lora")
    await pool.refresh()
    assert info(metrics) == {("a", "m", "none"), ("a", "chat", "v1"),
                          ("b", "m", "none"), ("b", "lora", "none"),
                          ("b", "chat", "v1"), ("b", "chat", "v2")}
    engines.models["b"] = models("other")  # it no longer serves the alias: series go
    await pool.refresh()
    assert {i for i in info(metrics) if i[0] == "b"} == {("b", "other", "none")}
    engines.models["b"] = b"{oops"  # down: what it served when last up stays
    await pool.refresh()
    assert {i for i in info(metrics) if i[0] == "b"} == {("b", "other", "none")}


async def test_a_malformed_models_answer_marks_only_that_engine_down() -> None:
    engines = Engines()
    pool = engines.pool()
    for bad in (b"{oops", b"[1, 2]", b'{"data": {"id": "m"}}', b'{"data": [{"id": 3}]}'):
        engines.models["a"] = bad
        await pool.refresh()  # never raises: the health loop lives on
        a, b = pool.engines
        assert b.healthy
        assert pool.ready
        if bad == b'{"data": [{"id": 3}]}':
            assert a.cards == {}  # a card without a string id is skipped
        else:
            assert not a.healthy
            assert a.last_error is not None
            assert "models" in a.last_error
    engines.models["a"] = MODELS
    await pool.refresh()
    assert pool.engines[0].healthy  # and it comes back


async def test_a_failing_health_check_of_any_kind_is_contained() -> None:
    engines = Engines()
    pool = engines.pool()

    async def broken(request: MemoryRequest) -> MemoryResponse:
        if "//a/" in request.url:
            raise RuntimeError("a bug in a lower layer")
        return await engines.answer(request)

    engines.transport.handler = broken
    await pool.refresh()
    assert [e.healthy for e in pool.engines] == [False, True]
    assert pool.engines[0].last_error == "health check failed"


async def test_only_a_real_restart_forgets_the_engine_cache() -> None:
    engines = Engines()
    pool = engines.pool()
    restarted: list[str] = []
    pool.on_restart = restarted.append
    await pool.refresh()
    engines.prefix_queries["a"] = 500
    await pool.scrape()
    pool.mark_down(pool.engines[0], EngineUnavailable("connection reset"))  # a blip
    await pool.refresh()
    engines.prefix_queries["a"] = 640
    await pool.scrape()
    assert pool.engines[0].healthy
    assert restarted == []
    engines.prefix_queries["a"] = 12  # the counters started again: a new process
    await pool.scrape()
    assert restarted == ["a"]
    down = engines.transport.handler

    async def refused(request: MemoryRequest) -> MemoryResponse:
        if "//a/" in request.url:
            raise ConnectionRefusedError
        return await engines.answer(request)

    engines.transport.handler = refused  # a health check finds it down ...
    await pool.refresh()
    assert restarted == ["a"]
    engines.transport.handler = down  # ... and a later one up: it restarted
    await pool.refresh()
    assert restarted == ["a", "a"]


def test_a_stale_scrape_says_nothing_of_load_or_kv_cache() -> None:
    engine = Engines().pool().engines[0]
    engine.in_flight = 1
    engine.scraped = EngineLoad(running=5, waiting=2, kv_usage=0.9)
    engine.scraped_at = time.monotonic()
    assert (engine.load, engine.kv_usage) == (7, 0.9)
    engine.scraped_at = time.monotonic() - 60  # the engine's /metrics stopped answering
    assert (engine.load, engine.kv_usage) == (1, 0.0)
