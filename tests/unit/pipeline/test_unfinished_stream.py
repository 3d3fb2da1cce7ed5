"""An engine that closes its stream cleanly but unfinished (no finish_reason, no usage,
no ``[DONE]``) has broken it: the client is told, the engine is blamed."""

from __future__ import annotations

from collections.abc import Callable

from gateway.upstream.memory import MemoryRequest, MemoryResponse
from tests.unit.pipeline.conftest import Rig, chunk, collect


async def test_a_stream_closed_before_done_ends_with_one_error_event_charged_to_the_engine(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(("a",))  # no other engine to continue on

    async def closes(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(200, [chunk("", role=True) + chunk("Hel"), chunk("lo")])

    rig.scripts.update(a=closes)
    ctx = rig.ctx({"stream": True})
    events = await collect(await rig.run(ctx))
    *chunks, last = events
    assert last == {"error": {"message": "engine closed the stream before it finished",
                              "type": "upstream_error", "param": None,
                              "code": "engine_error"}}
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hel", "lo"]
    assert ctx.outcome.status == "502"
    assert not rig.pool.engines[0].breaker.available()  # charged to the engine
    assert rig.sample("sluice_failovers_total", model="m", version="none",
                      outcome="error_event") == 1
    assert rig.sent_to("a")[0].closed
    assert await rig.admission.in_flight("m") == 0
