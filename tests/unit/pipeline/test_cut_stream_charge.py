"""A managed key's TPM is charged what a stream delivered, also when it was cut before
its usage event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.core.errors import RateLimited
from gateway.keys import KeyService, Limits, MemoryKeyStore, MemoryRateLimiter
from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import DONE, Rig, chunk, collect, slowly, usage


def texts(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events
                   for c in e.get("choices", []))


async def test_a_stream_cut_before_its_usage_event_charges_the_events_it_delivered(
        rig_factory: Callable[..., Rig]) -> None:
    limiter = MemoryRateLimiter(clock=lambda: 100.0)
    keys = KeyService(MemoryKeyStore(), limiter)
    key = (await keys.create("ci", tpm=3)).record
    rig = rig_factory(("a", "b"), resilience={"failover": False}, keys=keys)

    async def cut(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, slowly(chunk("", role=True) + chunk("One"), chunk(" two"),
                                          chunk(" three"), then=ConnectionResetError()))

    async def fine(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("Hi", finish="stop") + usage(1, 1) + DONE])

    rig.scripts.update(a=cut, b=fine)
    ctx = rig.ctx({"stream": True})
    ctx.principal, ctx.key = key.id, key
    events = await collect(await rig.run(ctx))
    assert texts(events) == "One two three"
    assert events[-1]["error"]["code"] == "engine_error"
    assert ctx.usage is None  # the engine never said
    # Three output events were charged: they spend this key's minute ...
    following = rig.ctx({"stream": True})
    following.principal, following.key = key.id, key
    with pytest.raises(RateLimited) as refused:
        await rig.run(following)
    assert refused.value.limit == "tpm"
    assert rig.sent_to("b") == []
    # ... and no more than three were (the role chunk carries none, the prompt is unknown).
    assert (await limiter.admit(key.id, Limits(tpm=4))).allowed
    assert rig.sample("sluice_key_tokens_total", key_id=key.id, model="m",
                      version="none") == 3
