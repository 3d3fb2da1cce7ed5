"""The stream session: relaying, continuing a broken stream, and the budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.core.errors import EngineError
from gateway.pipeline.director import StartedStream
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, collect, slowly, usage


def texts(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


async def test_a_stream_is_relayed_event_by_event(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def engine(request: MemoryRequest) -> MemoryResponse:
        body = request.json()
        assert body["stream_options"] == {"include_usage": True}  # usage always counted
        return MemoryResponse(200, [chunk("", role=True) + chunk("The"), chunk(" end"),
                                    chunk(None, finish="stop") + usage(4, 2) + DONE])

    rig.scripts.update(a=engine)
    ctx = rig.ctx({"stream": True})
    events = await collect(await rig.run(ctx))
    assert texts(events) == "The end"
    assert all(e["choices"] for e in events)  # the client did not ask for usage
    assert ctx.usage is not None
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (4, 2)
    assert ctx.outcome.status == "200"
    assert await rig.admission.in_flight("m") == 0
    assert rig.sent_to("a")[0].closed
    assert not rig.sent_to("a")[0].aborted


async def test_a_broken_stream_is_continued_on_another_engine(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def dies(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(chunk("", role=True) + chunk("Once"),
                                          chunk(" upon"), then=ConnectionResetError()))

    async def continues(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("", role=True, cid="chatcmpl-b"),
                                    chunk(" a time", cid="chatcmpl-b"),
                                    chunk(None, finish="stop", cid="chatcmpl-b")
                                    + usage(12, 2, cid="chatcmpl-b") + DONE])

    rig.scripts.update(a=dies, b=continues)
    ctx = rig.ctx({"stream": True, "max_tokens": 10,
                   "stream_options": {"include_usage": True}})
    events = await collect(await rig.run(ctx))
    assert texts(events) == "Once upon a time"
    assert {e["id"] for e in events} == {"chatcmpl-a"}
    roles = [c for e in events for c in e["choices"] if "role" in c["delta"]]
    assert len(roles) == 1  # no second role chunk mid-stream
    follow = rig.sent_to("b")[0].json()
    assert follow["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert (follow["continue_final_message"], follow["add_generation_prompt"],
            follow["max_tokens"]) == (True, False, 8)
    assert events[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4,
                                   "total_tokens": 14}
    assert (ctx.continuations, ctx.tried) == (1, {"a", "b"})
    assert rig.sample("sluice_failovers_total", model="m", version="none", outcome="continued") == 1


async def test_the_budget_refuses_a_continuation_storm(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(resilience={"retry_budget_ratio": 0.0, "retry_budget_min_per_s": 0.2})
    # 0.2/s over the 10 s window: two retries or continuations in all.

    async def dies(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(chunk("", role=True) + chunk("x"),
                                          then=ConnectionResetError()))

    async def fine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("y"), chunk(None, finish="stop") + DONE])

    rig.scripts.update(a=dies, b=fine, c=fine)
    outcomes = []
    for _ in range(4):
        rig.pool.engines[0].breaker.record_success()  # keep sending to the dying engine
        events = await collect(await rig.run(rig.ctx({"stream": True})))
        outcomes.append("error" if "error" in events[-1] else texts(events))
    assert outcomes == ["xy", "xy", "error", "error"]
    assert rig.sample("sluice_retry_budget_exhausted_total", model="m", version="none") == 2


async def test_an_error_event_from_the_engine_is_not_passed_on(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(resilience={"failover": False})

    async def errs(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("", role=True) + chunk("a"),
                                    b'data: {"error": {"message": "/srv/secret boom"}}\n\n'])

    rig.scripts.update(a=errs)
    ctx = rig.ctx({"stream": True})
    events = await collect(await rig.run(ctx))
    assert events[-1]["error"]["code"] == "engine_error"
    assert "secret" not in events[-1]["error"]["message"]
    assert ctx.outcome.status == "502"
    assert not rig.pool.engines[0].breaker.available()  # charged to the engine


async def test_a_bad_first_event_is_an_http_error(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def garbage(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [b"data: {oops\n\n"])

    rig.scripts.update(a=garbage)
    ctx = rig.ctx({"stream": True})
    with pytest.raises(EngineError):
        await rig.run(ctx)
    assert ctx.outcome.status == "502"
    assert await rig.admission.in_flight("m") == 0


@pytest.mark.parametrize("reads", [
    [b'data: {"id": "x", "choi', b"ces"],  # ends before its first event is whole
    [b"<html>\n\n<body>not SSE</body>\n\n</html>"],  # a page: no event at all
    [b'data: {"id": "', b"x" * 2048, b"x" * 2048],  # an endless first event
])
async def test_a_stream_broken_before_its_first_event_is_an_http_error(
        rig_factory: Callable[..., Rig], reads: list[bytes]) -> None:
    rig = rig_factory(max_event_bytes=1024)

    async def broken(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(*reads))

    rig.scripts.update(a=broken)
    ctx = rig.ctx({"stream": True})
    with pytest.raises(EngineError):
        await rig.run(ctx)
    assert ctx.outcome.status == "502"
    assert not rig.pool.engines[0].breaker.available()  # charged to the engine
    assert await rig.admission.in_flight("m") == 0


async def test_a_first_event_split_across_reads_is_the_head(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    first = chunk("", role=True) + chunk("Hi")

    async def split(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(first[:10], first[10:],
                                          chunk(None, finish="stop") + usage(3, 1) + DONE))

    rig.scripts.update(a=split)
    result = await rig.run(rig.ctx({"stream": True}))
    assert not isinstance(result, bytes)
    assert len(result.head) == 2
    assert texts(await collect(result)) == "Hi"


async def test_a_client_leaving_mid_stream_releases_everything(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def long(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(*[chunk("w")] * 100, gap_s=0.01))

    rig.scripts.update(a=long)
    ctx = rig.ctx({"stream": True})
    result = await rig.run(ctx)
    assert not isinstance(result, bytes)
    await anext(result.body)
    await result.body.aclose()  # what the response does when the client is gone
    assert ctx.outcome.status == "499"
    assert rig.sent_to("a")[0].aborted
    assert await rig.admission.in_flight("m") == 0
    assert rig.sample("sluice_client_disconnects_total", model="m", version="none") == 1


@pytest.mark.parametrize("after_first_token", [False, True])
async def test_a_gateway_error_is_not_charged_to_the_engine(
        rig_factory: Callable[..., Rig], after_first_token: bool) -> None:
    rig = rig_factory()
    first = [chunk("", role=True) + chunk("Hi")] if after_first_token else []

    async def fine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(*first, then=ValueError("a gateway bug")))

    rig.scripts.update(a=fine)
    ctx = rig.ctx({"stream": True})
    with pytest.raises(ValueError, match="a gateway bug"):
        await collect(await rig.run(ctx))
    assert ctx.outcome.status == "500"
    assert rig.pool.engines[0].breaker.available()
    assert rig.sent_to("b") == []  # and not retried elsewhere


async def test_an_early_start_yields_at_once_then_the_head(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    async def engine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("", role=True) + chunk("Hi"),
                                    chunk(None, finish="stop") + usage(4, 1) + DONE])

    rig.scripts.update(a=engine)
    ctx = rig.ctx({"stream": True})
    ctx.start_early = True
    result = await rig.run(ctx)
    assert isinstance(result, StartedStream)
    assert (result.head, result.waiting) == ([], True)
    assert rig.transport.requests == []  # nothing asked of an engine yet
    assert ctx.timings.admitted is not None
    assert ctx.timings.scheduled is None
    assert texts(await collect(result)) == "Hi"
    assert ctx.outcome.status == "200"


async def test_an_early_start_that_fails_before_the_head_ends_with_an_error_event(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(("a",))

    async def five_hundred(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(500, b"oops")

    rig.scripts.update(a=five_hundred)
    ctx = rig.ctx({"stream": True})
    ctx.start_early = True
    events = await collect(await rig.run(ctx))
    assert events == [{"error": {"message": "engine error (HTTP 500)",
                                 "type": "upstream_error", "param": None,
                                 "code": "engine_error"}}]
    assert ctx.outcome.status == "502"
    assert await rig.admission.in_flight("m") == 0


async def test_an_early_start_closed_before_the_head_is_a_disconnect(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    ctx = rig.ctx({"stream": True})
    ctx.start_early = True
    result = await rig.run(ctx)
    assert isinstance(result, StartedStream)
    await result.body.aclose()  # the client left before the engine was asked
    assert (ctx.outcome.status, ctx.outcome.client_left) == ("499", True)
    assert await rig.admission.in_flight("m") == 0
    assert rig.sample("sluice_requests_in_flight", model="m", version="none") == 0
