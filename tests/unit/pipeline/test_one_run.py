"""Every endpoint goes through the director's one run: each step of it refuses a chat
request, a passthrough request (embeddings, tokenize), a Responses stream and a
``/v1/realtime`` session alike. Removing a step from :meth:`Director.run` fails every
row of its test at once: there is one place to break."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.config.fleet import AdmissionSettings
from gateway.core.context import RequestContext
from gateway.core.endpoints import CHAT, EMBEDDINGS, REALTIME, RESPONSES, TOKENIZE, Endpoint
from gateway.core.errors import (
    InvalidField,
    Overloaded,
    PermissionDenied,
    RateLimited,
    ShuttingDown,
)
from gateway.keys import KeyService, MemoryKeyStore, MemoryRateLimiter
from gateway.pipeline.director import Answered, StartedStream
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, usage

RESPONSE_EVENTS = (b'event: response.output_text.delta\ndata: {"type": '
                   b'"response.output_text.delta", "delta": "Hi", "sequence_number": 0}\n\n'
                   b'event: response.completed\ndata: {"type": "response.completed", '
                   b'"response": {"usage": {"input_tokens": 1, "output_tokens": 1}}, '
                   b'"sequence_number": 1}\n\n')

CASES: dict[str, tuple[Endpoint, dict[str, Any]]] = {
    "chat": (CHAT, {"messages": [{"role": "user", "content": "hi"}]}),
    "chat stream": (CHAT, {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
    "embeddings": (EMBEDDINGS, {"input": "hi"}),
    "tokenize": (TOKENIZE, {"prompt": "hi"}),
    "responses stream": (RESPONSES, {"input": "hi", "stream": True}),
    "realtime": (REALTIME, {}),
}


async def engine(request: MemoryRequest) -> MemoryResponse:
    if request.url.endswith("/v1/chat/completions"):
        if request.json().get("stream"):
            return MemoryResponse(200, [chunk("Hi", role=True, finish="stop") + usage(1, 1)
                                        + DONE])
        return MemoryResponse(200, orjson.dumps({"choices": [{
            "index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}]}))
    if request.url.endswith("/v1/responses"):
        return MemoryResponse(200, [RESPONSE_EVENTS])
    return MemoryResponse(200, b'{"data": [], "tokens": [1]}')


async def realtime_answer(ctx: RequestContext) -> Answered:
    return None  # a session's relay is its own (see gateway.edge.websocket.realtime)


class Case:
    def __init__(self, rig: Rig, name: str) -> None:
        self.rig = rig
        self.endpoint, self.body = CASES[name]

    def ctx(self, **body: Any) -> RequestContext:
        return RequestContext.new("req-1", self.endpoint, {"model": "m", **self.body, **body})

    async def run(self, ctx: RequestContext) -> Answered:
        answer = realtime_answer if self.endpoint is REALTIME else self.rig.answer
        result = await self.rig.director.run(ctx, answer)
        if isinstance(result, StartedStream):
            async for _ in result.body:
                pass
        return result


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, rig_factory: Callable[..., Rig]) -> Case:
    rig = rig_factory(("a",))
    rig.scripts["a"] = engine
    return Case(rig, request.param)


async def test_each_endpoint_is_answered_and_counted_once(case: Case) -> None:
    await case.run(case.ctx())
    name = case.endpoint.name
    assert case.rig.sample("sluice_requests_total", model="m", version="none", engine=(
        "none" if case.endpoint is REALTIME else "a"), endpoint=name, status="200") == 1
    assert case.rig.sample("sluice_requests_in_flight", model="m", version="none") == 0


async def test_a_draining_gateway_refuses_every_endpoint(case: Case) -> None:
    case.rig.connector._drain.begin()
    with pytest.raises(ShuttingDown):
        await case.run(case.ctx())
    assert case.rig.transport.requests == []


async def test_a_key_is_held_to_its_models_on_every_endpoint(case: Case) -> None:
    keys = KeyService(MemoryKeyStore(), MemoryRateLimiter())
    ctx = case.ctx()
    ctx.key = (await keys.create("other only", models=["other"])).record
    with pytest.raises(PermissionDenied):
        await case.run(ctx)


async def test_every_endpoint_validates_what_it_acts_on(case: Case) -> None:
    with pytest.raises(InvalidField) as refused:
        await case.run(case.ctx(model=7))
    assert refused.value.param == "model"


async def test_a_keys_requests_per_minute_count_on_every_endpoint(
        case: Case, rig_factory: Callable[..., Rig]) -> None:
    keys = KeyService(MemoryKeyStore(), MemoryRateLimiter(clock=lambda: 100.0))
    rig = rig_factory(("a",), keys=keys)
    rig.scripts["a"] = engine
    case.rig = rig
    key = (await keys.create("one a minute", rpm=1)).record
    first, second = case.ctx(), case.ctx()
    first.key = second.key = key
    await case.run(first)
    with pytest.raises(RateLimited):
        await case.run(second)


async def test_admission_holds_every_endpoint(
        case: Case, rig_factory: Callable[..., Rig]) -> None:
    case.rig = rig = rig_factory(("a",), admission=AdmissionSettings(max_in_flight_per_engine=1))
    rig.scripts["a"] = engine
    await rig.admission.enter("m", 1)  # the model's one slot is taken
    with pytest.raises(Overloaded):
        await case.run(case.ctx())
    assert case.rig.transport.requests == []
