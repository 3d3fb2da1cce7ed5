"""The director's own books: what a request leaves behind however it ends."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, collect, usage

ANSWER = {"id": "c", "object": "chat.completion", "choices": [],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


async def answer(request: MemoryRequest) -> MemoryResponse:
    if request.json().get("stream"):
        return MemoryResponse(200, [chunk("Hi", finish="stop") + usage(1, 1) + DONE])
    return MemoryResponse(200, orjson.dumps(ANSWER))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_store_failing_to_release_admission_spoils_neither_answer_nor_books(
        rig_factory: Callable[..., Rig], stream: bool) -> None:
    rig = rig_factory()
    rig.scripts.update(a=answer)

    async def store_down(model: str) -> None:
        raise ConnectionError("the store is unreachable")

    rig.admission.leave = store_down  # type: ignore[method-assign]
    ctx = rig.ctx({"stream": stream})
    result = await rig.run(ctx)
    if stream:
        events = await collect(result)
        assert events[0]["choices"][0]["delta"]["content"] == "Hi"
    else:
        assert orjson.loads(result) == ANSWER  # type: ignore[arg-type]
    assert ctx.outcome.status == "200"
    assert rig.sample("sluice_requests_in_flight", model="m", version="none") == 0
    assert rig.sample("sluice_requests_total", model="m", engine="a",
                      endpoint="chat", status="200", version="none") == 1


async def answer_hello(request: MemoryRequest) -> MemoryResponse:
    if request.json().get("stream"):
        return MemoryResponse(200, [chunk("Hel", role=True), chunk("lo", finish="stop")
                                    + usage(1, 2) + DONE])
    return MemoryResponse(200, orjson.dumps({**ANSWER, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"},
         "finish_reason": "stop"}]}))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("keep", "kept"), [(0, None), (4, "Hell"), (100, "Hello")])
async def test_the_answer_text_is_kept_only_as_far_as_asked(
        rig_factory: Callable[..., Rig], stream: bool, keep: int, kept: str | None) -> None:
    rig = rig_factory()
    rig.scripts.update(a=answer_hello)
    ctx = rig.ctx({"stream": stream})
    ctx.keep_text = keep
    result = await rig.run(ctx)
    if stream:
        await collect(result)
    assert ctx.answer_text == kept
