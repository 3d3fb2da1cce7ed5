"""The prefix-cache producer and its hooks: recorded when an attempt opens, and only then."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.fleet import PrefixIndexSettings
from gateway.scheduling.producers import PrefixCacheIndexer
from gateway.scheduling.producers import prefix_index as prefix_module
from gateway.scheduling.producers.prefix_cache import SCRATCH_KEY
from tests.unit.scheduling.fakes import Engine, Harness, request

TEXT = "a prompt long enough for several blocks of eight characters"


def harness() -> Harness:
    return Harness(default={"strategy": "prefix"}, prefix={"block_chars": 8})


def held(h: Harness, engine: str) -> int:
    return h.scheduler.producers.prefix_cache.index.size(engine)


def test_schedule_alone_records_nothing() -> None:
    h = harness()
    engines = [Engine("a"), Engine("b")]
    for _ in range(3):
        h.pick(engines, TEXT, opened=False)
    assert held(h, "a") == held(h, "b") == 0
    assert h.pick(engines, TEXT, opened=False).reason == "prefix_miss"


def test_a_retried_request_is_attributed_to_the_engine_whose_attempt_opened() -> None:
    h = harness()
    engines = [Engine("a"), Engine("b")]
    ctx = request(TEXT)
    first = h.scheduler.schedule(ctx, engines)  # this attempt fails before opening
    ctx.tried.add(first.name)
    second = h.scheduler.schedule(ctx, engines)
    h.scheduler.attempt_opened(ctx, second)
    assert second is not first
    assert held(h, first.name) == 0
    assert held(h, second.name) > 0
    assert h.pick(engines, TEXT + " again").engine is second


def test_engine_restarted_forgets_what_it_held() -> None:
    h = harness()
    engines = [Engine("a"), Engine("b")]
    owner = h.pick(engines, TEXT).engine
    assert held(h, owner.name) > 0
    h.scheduler.engine_restarted(owner.name)
    assert held(h, owner.name) == 0
    assert h.pick(engines, TEXT, opened=False).reason == "prefix_miss"


def test_hashes_are_computed_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = prefix_module.block_hashes

    def counting(*args: Any) -> list[int]:
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr("gateway.scheduling.producers.prefix_cache.block_hashes", counting)
    h = harness()
    engines = [Engine("a"), Engine("b"), Engine("c")]
    ctx = request(TEXT)
    for _ in range(3):  # the first attempt and two retries
        engine = h.scheduler.schedule(ctx, engines)
        ctx.tried.add(engine.name)
    h.scheduler.attempt_opened(ctx, engine)
    assert len(calls) == 1
    assert ctx.scratch[SCRATCH_KEY] == real(calls[0], 8, "m")


def test_models_without_the_prefix_scorer_feed_no_index() -> None:
    h = Harness(default={"strategy": "least_loaded"}, prefix={"block_chars": 8})
    ctx = request(TEXT)
    engine = h.scheduler.schedule(ctx, [Engine("a"), Engine("b")])
    h.scheduler.attempt_opened(ctx, engine)
    assert held(h, engine.name) == 0
    assert SCRATCH_KEY not in ctx.scratch


def test_hashes_are_rooted_at_the_model() -> None:
    index = PrefixCacheIndexer(PrefixIndexSettings(block_chars=8))
    assert index.hashes(request(TEXT, model="m")) != index.hashes(request(TEXT, model="n"))
