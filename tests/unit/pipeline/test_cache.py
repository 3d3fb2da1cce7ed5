"""The director's cache steps over scripted engines: lookup, replay, coalescing, and
the finish hook that stores only complete answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway.core.context import RequestContext
from gateway.stores import MemoryLocks
from gateway.stores.memory import MemoryCache
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, collect, slowly, usage

ANSWER = {"id": "c", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
GREEDY = {"temperature": 0}


def streamed(*, finish: str | None = "stop", gap_s: float = 0.0) -> MemoryResponse:
    return MemoryResponse(200, slowly(chunk("", role=True) + chunk("Hi"), chunk(" there"),
                                      chunk(None, finish=finish) + usage(3, 2) + DONE,
                                      gap_s=gap_s))


async def answer(request: MemoryRequest) -> MemoryResponse:
    if request.json().get("stream"):
        return streamed()
    return MemoryResponse(200, orjson.dumps(ANSWER))


def cached_rig(rig_factory: Callable[..., Rig], resilience: dict[str, Any] | None = None,
               **cache: Any) -> Rig:
    rig = rig_factory(cache=cache, resilience=resilience)
    rig.scripts.update(a=answer, b=answer, c=answer)
    return rig


def lookups(rig: Rig, result: str) -> float:
    return rig.sample("sluice_cache_lookups_total", model="m", version="none", result=result)


async def run(rig: Rig, body: dict[str, Any], **use: bool) -> tuple[RequestContext, Any]:
    ctx = rig.ctx(body)
    for name, value in use.items():
        setattr(ctx.cache, name, value)
    result = await rig.run(ctx)
    if body.get("stream"):
        return ctx, await collect(result)
    return ctx, orjson.loads(result)


async def test_a_repeated_answer_is_served_without_an_engine_call(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)
    first, answer1 = await run(rig, GREEDY)
    second, answer2 = await run(rig, GREEDY)
    assert answer1 == answer2 == ANSWER
    assert (first.cache.result, second.cache.result) == ("miss", "hit")
    assert len(rig.transport.requests) == 1
    assert second.outcome.status == "200"
    assert second.usage is None
    assert (lookups(rig, "miss"), lookups(rig, "hit")) == (1, 1)
    assert rig.sample("sluice_requests_in_flight", model="m", version="none") == 0


async def test_a_sampled_request_is_not_cached_unless_opted_in(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)
    for _ in range(2):
        ctx, _ = await run(rig, {"temperature": 0.8})
        assert ctx.cache.result == "bypass"
    assert len(rig.transport.requests) == 2
    await run(rig, {"temperature": 0.8}, allow=True)
    ctx, _ = await run(rig, {"temperature": 0.8}, allow=True)
    assert ctx.cache.result == "hit"
    assert len(rig.transport.requests) == 3


async def test_a_streamed_hit_replays_the_events_and_usage_only_when_asked(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)
    _, live = await run(rig, {**GREEDY, "stream": True})
    assert all(event["choices"] for event in live)  # no usage asked for
    ctx, replayed = await run(rig, {**GREEDY, "stream": True})
    assert ctx.cache.result == "hit"
    assert replayed == live
    with_usage = {**GREEDY, "stream": True, "stream_options": {"include_usage": True}}
    ctx, replayed = await run(rig, with_usage)
    assert ctx.cache.result == "hit"
    assert replayed[:-1] == live
    assert replayed[-1]["choices"] == []
    assert replayed[-1]["usage"]["total_tokens"] == 5
    assert replayed[-1]["id"] == live[0]["id"]  # the stored answer's own id
    assert len(rig.transport.requests) == 1


async def test_a_leader_asking_for_usage_stores_it_apart(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)
    with_usage = {**GREEDY, "stream": True, "stream_options": {"include_usage": True}}
    _, live = await run(rig, with_usage)
    assert live[-1]["usage"]["total_tokens"] == 5
    _, replayed = await run(rig, {**GREEDY, "stream": True})
    assert replayed == live[:-1]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unfinished_answer_is_not_stored(rig_factory: Callable[..., Rig],
                                                  stream: bool) -> None:
    rig = cached_rig(rig_factory)
    cut = dict(ANSWER, choices=[{**ANSWER["choices"][0], "finish_reason": None}])  # type: ignore[dict-item]

    async def unfinished(request: MemoryRequest) -> MemoryResponse:
        if stream:
            return streamed(finish=None)
        return MemoryResponse(200, orjson.dumps(cut))

    rig.scripts.update(a=unfinished)
    await run(rig, {**GREEDY, "stream": stream})
    ctx, _ = await run(rig, {**GREEDY, "stream": stream})
    assert ctx.cache.result == "miss"
    assert len(rig.transport.requests) == 2


async def test_a_stream_broken_without_a_continuation_is_not_stored(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory, resilience={"failover": False})

    async def breaks(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(chunk("Hi", role=True),
                                          then=ConnectionResetError()))

    rig.scripts.update(a=breaks, b=breaks, c=breaks)
    _, events = await run(rig, {**GREEDY, "stream": True})
    assert "error" in events[-1]
    ctx, _ = await run(rig, {**GREEDY, "stream": True})
    assert ctx.cache.result == "miss"


async def test_no_store_and_no_cache(rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)
    ctx, _ = await run(rig, GREEDY, no_store=True)
    assert ctx.cache.result == "bypass"
    ctx, _ = await run(rig, GREEDY)
    assert ctx.cache.result == "miss"  # no-store stored nothing
    ctx, _ = await run(rig, GREEDY, no_store=True)
    assert ctx.cache.result == "bypass"  # nor does it read
    ctx, _ = await run(rig, GREEDY, no_cache=True)
    assert ctx.cache.result == "miss"  # asked for a fresh answer
    assert len(rig.transport.requests) == 4
    ctx, _ = await run(rig, GREEDY)
    assert ctx.cache.result == "hit"


@pytest.mark.parametrize("stream", [False, True])
async def test_identical_requests_in_flight_share_one_upstream_call(
        rig_factory: Callable[..., Rig], stream: bool) -> None:
    rig = cached_rig(rig_factory)

    async def slow(request: MemoryRequest) -> MemoryResponse:
        if stream:
            return streamed(gap_s=0.02)
        await asyncio.sleep(0.05)
        return MemoryResponse(200, orjson.dumps(ANSWER))

    rig.scripts.update(a=slow)
    runs = await asyncio.gather(*(run(rig, {**GREEDY, "stream": stream})
                                  for _ in range(20)))
    assert len(rig.transport.requests) == 1
    results = sorted(ctx.cache.result for ctx, _ in runs)
    assert results == ["coalesced"] * 19 + ["miss"]
    assert all(answer == runs[0][1] for _, answer in runs)
    assert all(ctx.outcome.status == "200" for ctx, _ in runs)
    assert len(rig.caching.flights) == 0  # type: ignore[union-attr]
    assert rig.sample("sluice_requests_in_flight", model="m", version="none") == 0


async def test_followers_make_their_own_call_when_the_leader_fails_first(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory, resilience={"retries": 0})
    calls = 0

    async def first_fails(request: MemoryRequest) -> MemoryResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)
            return MemoryResponse(500, b'{"error": "boom"}')
        return streamed(gap_s=0.01)

    rig.scripts.update(a=first_fails, b=first_fails, c=first_fails)
    body = {**GREEDY, "stream": True}
    leader = asyncio.create_task(run(rig, body))
    await asyncio.sleep(0.01)
    followers = await asyncio.gather(*(run(rig, body) for _ in range(4)))
    with pytest.raises(Exception, match="500"):
        await leader
    # One follower led a new call when the leader failed; the others followed it.
    assert calls == 2
    assert sorted(ctx.cache.result for ctx, _ in followers) == ["coalesced"] * 3 + ["miss"]
    assert all(events == followers[0][1] for _, events in followers)
    assert (lookups(rig, "miss"), lookups(rig, "coalesced")) == (2, 3)


async def test_followers_of_a_leader_cut_mid_stream_end_with_an_error_event(
        rig_factory: Callable[..., Rig]) -> None:
    rig = cached_rig(rig_factory)

    async def never_ends(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(chunk("Hi", role=True), chunk(" a"), chunk(" b"),
                                          gap_s=0.05))

    rig.scripts.update(a=never_ends)
    leader = rig.ctx({**GREEDY, "stream": True})
    started = await rig.run(leader)
    follower = asyncio.create_task(run(rig, {**GREEDY, "stream": True}))
    await asyncio.sleep(0.07)
    await started.body.aclose()  # type: ignore[union-attr]  # the leader's client left
    ctx, events = await follower
    assert ctx.cache.result == "coalesced"
    assert events[0]["choices"][0]["delta"]["content"] == "Hi"
    assert "error" in events[-1]
    assert ctx.outcome.status == "502"


def replicas(rig_factory: Callable[..., Rig], **cache: Any) -> tuple[Rig, Rig]:
    """Two gateways' directors over one store and one set of leases, each with its own
    engines."""
    shared = {"store": MemoryCache(), "locks": MemoryLocks(), **cache}
    return cached_rig(rig_factory, **shared), cached_rig(rig_factory, **shared)


def calls(*rigs: Rig) -> int:
    return sum(len(rig.transport.requests) for rig in rigs)


@pytest.mark.parametrize("stream", [False, True])
async def test_identical_requests_on_two_replicas_make_one_upstream_call(
        rig_factory: Callable[..., Rig], stream: bool) -> None:
    one, two = replicas(rig_factory)

    async def slow(request: MemoryRequest) -> MemoryResponse:
        await asyncio.sleep(0.05)
        return await answer(request)

    for rig in (one, two):
        rig.scripts.update(a=slow)
    body = {**GREEDY, "stream": stream}
    runs = await asyncio.gather(*(run(rig, body) for _ in range(10) for rig in (one, two)))
    assert calls(one, two) == 1
    assert sorted(ctx.cache.result for ctx, _ in runs) == ["coalesced"] * 19 + ["miss"]
    assert all(result == runs[0][1] for _, result in runs)
    ctx, _ = await run(two, body)
    assert ctx.cache.result == "hit"


async def test_a_replica_makes_its_own_call_when_the_others_leader_fails(
        rig_factory: Callable[..., Rig]) -> None:
    one, two = replicas(rig_factory)

    async def fails(request: MemoryRequest) -> MemoryResponse:
        await asyncio.sleep(0.05)
        return MemoryResponse(400, b'{"error": {"message": "no"}}')

    one.scripts.update(a=fails)
    leader = asyncio.create_task(run(one, GREEDY))
    await asyncio.sleep(0.01)
    follower, _ = await run(two, GREEDY)
    with pytest.raises(Exception, match="no"):
        await leader
    assert follower.cache.result == "miss"
    assert (calls(one), calls(two)) == (1, 1)


async def test_the_wait_for_another_replica_is_bounded(
        rig_factory: Callable[..., Rig]) -> None:
    one, two = replicas(rig_factory, follow_wait_s=0.05)

    async def stuck(request: MemoryRequest) -> MemoryResponse:
        await asyncio.sleep(0.3)
        return await answer(request)

    one.scripts.update(a=stuck)
    leader = asyncio.create_task(run(one, GREEDY))
    await asyncio.sleep(0.01)
    follower, _ = await run(two, GREEDY)
    assert follower.cache.result == "miss"
    await leader
    assert calls(one, two) == 2
