"""Opening attempts: retries before the first byte, and what is never retried."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from gateway.core.errors import (
    EngineConnectTimeout,
    EngineError,
    EngineTimeout,
    UpstreamRejected,
)
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import Rig, slowly

ANSWER = orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {
    "role": "assistant", "content": "Paris"}}], "usage": {"prompt_tokens": 5,
                                                          "completion_tokens": 1}})


async def ok(request: MemoryRequest) -> MemoryResponse:
    return MemoryResponse(200, ANSWER)


async def five_hundred(request: MemoryRequest) -> MemoryResponse:
    return MemoryResponse(500, b"<html>secret stack trace</html>")


async def refused(request: MemoryRequest) -> MemoryResponse:
    raise ConnectionRefusedError


async def test_a_failed_engine_is_retried_on_the_next(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.scripts.update(a=five_hundred, b=ok, c=ok)
    ctx = rig.ctx({})
    assert await rig.run(ctx) == ANSWER
    assert (ctx.tried, ctx.attempts, ctx.engine) == ({"a", "b"}, 2, "b")
    assert rig.scheduler.opened == ["b"]  # only an open attempt is attributed
    assert not rig.pool.engines[0].breaker.available()
    assert rig.sample("sluice_retries_total", model="m", version="none") == 1
    assert await rig.admission.in_flight("m") == 0
    # vLLM takes X-Request-Id as its request id: every attempt carries the same one.
    assert [r.headers["X-Request-Id"] for r in rig.transport.requests] == ["req-1"] * 2


async def test_an_engine_4xx_is_passed_on_and_not_retried(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def bad_request(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(422, orjson.dumps({"error": {
            "message": "temperature too high", "type": "BadRequestError",
            "param": "temperature", "code": "out_of_range"}}))

    async def vllm_style(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(400, orjson.dumps({"error": {
            "message": "max_tokens too large", "type": "BadRequestError", "param": None,
            "code": 400}}))


    rig.scripts.update(a=bad_request, b=ok, c=ok)
    with pytest.raises(UpstreamRejected) as caught:
        await rig.run(rig.ctx({}))
    error = caught.value
    assert (error.status_code, error.message, error.param, error.engine_code) == (
        422, "temperature too high", "temperature", "out_of_range")
    assert error.body()["error"]["type"] == "BadRequestError"  # as the engine said
    assert rig.sent_to("b") == []
    assert rig.pool.engines[0].breaker.available()  # the engine did its job
    rig.scripts.update(a=vllm_style)
    with pytest.raises(UpstreamRejected) as numeric:
        await rig.run(rig.ctx({}))
    assert numeric.value.body() == {"error": {"message": "max_tokens too large",
                                              "type": "BadRequestError", "param": None,
                                              "code": 400}}


async def test_a_first_token_timeout_is_not_retried(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(timeouts={"first_token_s": 0.05})

    async def stalls(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(b"data: {}\n\n", gap_s=5))

    rig.scripts.update(a=stalls, b=ok, c=ok)
    with pytest.raises(EngineTimeout):
        await rig.run(rig.ctx({"stream": True}))
    assert rig.sent_to("b") == []
    assert rig.sent_to("a")[0].aborted


async def test_a_total_time_timeout_does_not_count_against_the_engine(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(timeouts={"total_s": 0.05})

    async def long_answer(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(ANSWER, gap_s=5))

    rig.scripts.update(a=long_answer, b=ok, c=ok)
    with pytest.raises(EngineTimeout) as caught:
        await rig.run(rig.ctx({}))
    assert not caught.value.blames_engine
    assert rig.pool.engines[0].breaker.available()
    assert rig.sent_to("b") == []


async def test_the_same_fault_on_two_engines_stops_the_retries(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.scripts.update(a=five_hundred, b=five_hundred, c=ok)
    with pytest.raises(EngineError) as caught:
        await rig.run(rig.ctx({}))
    assert caught.value.status_code == 502
    assert "secret" not in caught.value.message  # an engine's page never reaches clients
    assert rig.sent_to("c") == []
    assert rig.pool.engines[2].breaker.available()


async def test_unreachable_engines_do_not_count_as_the_same_fault(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.scripts.update(a=refused, b=refused, c=ok)
    assert await rig.run(rig.ctx({})) == ANSWER
    assert [e.healthy for e in rig.pool.engines] == [False, False, True]


async def test_a_connect_timeout_is_retried_and_counted_without_marking_the_engine_down(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def slow_to_accept(request: MemoryRequest) -> MemoryResponse:
        raise EngineConnectTimeout("engine did not accept the connection in time")

    rig.scripts.update(a=slow_to_accept, b=slow_to_accept, c=ok)
    ctx = rig.ctx({})
    assert await rig.run(ctx) == ANSWER  # nothing was sent: not a 504
    assert (ctx.tried, ctx.engine) == ({"a", "b", "c"}, "c")
    assert [e.healthy for e in rig.pool.engines] == [True, True, True]
    assert [e.breaker.available() for e in rig.pool.engines] == [False, False, True]
    rig.scripts.update(c=slow_to_accept)
    with pytest.raises(EngineConnectTimeout) as caught:
        await rig.run(rig.ctx({}))
    assert caught.value.status_code == 503


async def test_a_non_json_answer_is_a_502_and_retried(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def html(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, b"<html>hello</html>")

    rig.scripts.update(a=html, b=ok, c=ok)
    assert await rig.run(rig.ctx({})) == ANSWER
    rig.scripts.update(b=html, c=html)
    with pytest.raises(EngineError):
        await rig.run(rig.ctx({}))


async def test_the_retry_budget_stops_retries(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(resilience={"retry_budget_ratio": 0.0, "retry_budget_min_per_s": 0.0})
    rig.scripts.update(a=refused, b=ok, c=ok)
    with pytest.raises(EngineError):
        await rig.run(rig.ctx({}))
    assert rig.sent_to("b") == []
    assert rig.sample("sluice_retry_budget_exhausted_total", model="m", version="none") == 1
