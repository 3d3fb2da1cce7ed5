"""A director over scripted in-memory engines: no sockets, every step observable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.cache import CachePolicy, ResponseCaching
from gateway.config.fleet import AdmissionSettings, BreakerSettings, ResilienceSettings
from gateway.config.settings import EngineConfig, TimeoutSettings
from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT
from gateway.core.errors import NoHealthyEngine
from gateway.keys import KeyService
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.admission import Admission
from gateway.pipeline.answer import Answer
from gateway.pipeline.connector import Connector
from gateway.pipeline.director import Answered, Director, StartedStream
from gateway.pipeline.drain import Drain
from gateway.stores.memory import MemoryCache, MemoryCounters
from gateway.upstream.client import EngineClient
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport
from gateway.upstream.pool import EnginePool, EngineState

Script = Callable[[MemoryRequest], Awaitable[MemoryResponse]]


class InOrder:
    """The scheduler of these tests: the first routable engine not yet tried."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def schedule(self, ctx: RequestContext, engines: list[EngineState]) -> EngineState:
        for engine in engines:
            if engine.routable and engine.name not in ctx.tried:
                engine.breaker.on_pick()
                return engine
        raise NoHealthyEngine("no engine left")

    def attempt_opened(self, ctx: RequestContext, engine: EngineState) -> None:
        self.opened.append(engine.name)


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None,
          cid: str = "chatcmpl-a") -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    obj = {"id": cid, "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage(prompt: int, completion: int, cid: str = "chatcmpl-a") -> bytes:
    obj = {"id": cid, "choices": [], "usage": {"prompt_tokens": prompt,
                                               "completion_tokens": completion,
                                               "total_tokens": prompt + completion}}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def slowly(*chunks: bytes, then: BaseException | None = None,
                 gap_s: float = 0.0) -> AsyncIterator[bytes]:
    for data in chunks:
        await asyncio.sleep(gap_s)
        yield data
    if then is not None:
        raise then


@dataclass
class Rig:
    director: Director
    answer: Answer
    pool: EnginePool
    scheduler: InOrder
    transport: MemoryTransport
    admission: Admission
    metrics: GatewayMetrics
    connector: Connector
    caching: ResponseCaching | None = None
    scripts: dict[str, Script] = field(default_factory=dict)

    async def run(self, ctx: RequestContext) -> Answered:
        """``ctx`` through the director's run, answered by the engines."""
        return await self.director.run(ctx, self.answer)

    def ctx(self, body: dict[str, Any]) -> RequestContext:
        return RequestContext.new("req-1", CHAT, {"model": "m", "messages": [
            {"role": "user", "content": "hi"}], **body})

    def sent_to(self, engine: str) -> list[MemoryRequest]:
        return [r for r in self.transport.requests if f"//{engine}/" in r.url]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def collect(result: Answered) -> list[dict[str, Any]]:
    """Every event a streamed result yields, decoded (the head first)."""
    assert isinstance(result, StartedStream)
    events = [orjson.loads(p) for p in result.head]
    try:
        async for batch in result.body:
            events += [orjson.loads(p) for p in batch]
    finally:
        await result.body.aclose()
    return events


@pytest.fixture
def rig_factory() -> Callable[..., Rig]:
    def make(names: tuple[str, ...] = ("a", "b", "c"), *,
             resilience: dict[str, Any] | None = None,
             timeouts: dict[str, Any] | None = None,
             admission: AdmissionSettings | None = None,
             max_event_bytes: int = 4 * 1024 * 1024,
             cache: dict[str, Any] | None = None,
             keys: KeyService | None = None) -> Rig:
        scripts: dict[str, Script] = {}

        async def handler(request: MemoryRequest) -> MemoryResponse:
            engine = request.url.split("//")[1].split("/")[0]
            return await scripts[engine](request)

        transport = MemoryTransport(handler)
        limits = TimeoutSettings(**(timeouts or {}))
        pool = EnginePool(
            [EngineConfig(name=n, url=f"http://{n}") for n in names],
            lambda c: EngineClient(c.name, c.base_url, transport, limits),
            GatewayMetrics(), health_interval_s=1,
            breaker=BreakerSettings(failure_threshold=1, open_s=60))
        for engine in pool.engines:
            engine.healthy = True
            engine.cards = {"m": {"id": "m", "max_model_len": 2048}}
        metrics = GatewayMetrics()
        settings = ResilienceSettings(**{"backoff_base_s": 0.0, **(resilience or {})})
        drain = Drain(30, metrics)
        scheduler = InOrder()
        connector = Connector(pool, scheduler, drain, metrics, settings)
        gate = Admission(admission or AdmissionSettings(), MemoryCounters())
        caching = None if cache is None else ResponseCaching(
            CachePolicy(shared_across_keys=cache.get("shared", False)),
            cache.get("store") or MemoryCache(), metrics, ttl_s=cache.get("ttl_s", 60.0),
            max_entry_bytes=1024 * 1024, coalesce=cache.get("coalesce", True), waits=limits,
            locks=cache.get("locks"), follow_wait_s=cache.get("follow_wait_s", 30.0))
        director = Director(pool, gate, caching, drain, metrics, keys=keys)
        answer = Answer(connector, drain, metrics, settings, director.finish,
                        max_event_bytes=max_event_bytes)
        return Rig(director, answer, pool, scheduler, transport, gate, metrics, connector,
                   caching, scripts)

    return make
