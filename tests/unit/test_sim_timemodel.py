"""The simulator's cost model and scheduler, with exact numbers and no event loop."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from simulator.config import SimConfig
from simulator.engine import RequestState, Scheduler, SimRequest
from simulator.timemodel import (
    PrefixCache,
    batch_slowdown,
    block_hashes,
    blocks_needed,
    cached_prefix_tokens,
    step_time_ms,
)


@pytest.mark.parametrize(("tokens", "blocks"), [(0, 0), (1, 1), (15, 1), (16, 1), (17, 2), (33, 3)])
def test_blocks_needed(tokens: int, blocks: int) -> None:
    assert blocks_needed(tokens, 16) == blocks


@pytest.mark.parametrize(
    ("batch", "expected"), [(0, 1.0), (64, 1.25), (128, 1.5), (256, 2.0), (1000, 2.0)]
)
def test_batch_slowdown_is_linear_up_to_max_num_seqs(batch: int, expected: float) -> None:
    assert batch_slowdown(batch, 256, 2.0) == pytest.approx(expected)


def test_no_slowdown_by_default() -> None:
    assert batch_slowdown(256, 256, 1.0) == 1.0


def test_step_time_adds_prefill_only_for_steps_that_admit() -> None:
    config = SimConfig(
        decode_step_ms=10.0,
        decode_slowdown_at_max_batch=2.0,
        max_num_seqs=4,
        prefill_base_ms=20.0,
        prefill_per_token_ms=0.5,
    )
    decode_only = step_time_ms(config, batch_size=2, new_requests=0, uncached_prefill_tokens=0)
    assert decode_only == pytest.approx(15.0)
    with_prefill = step_time_ms(config, batch_size=2, new_requests=1, uncached_prefill_tokens=100)
    assert with_prefill == pytest.approx(15.0 + 20.0 + 50.0)
    slowed = step_time_ms(
        config, batch_size=4, new_requests=0, uncached_prefill_tokens=0, slow_token_ms=3.0
    )
    assert slowed == pytest.approx(20.0 + 3.0)


def test_block_hashes_chain_over_full_blocks_only() -> None:
    tokens = [f"t{i}" for i in range(40)]
    hashes = block_hashes(tokens, 16)
    assert len(hashes) == 2
    same_prefix = block_hashes([*tokens[:32], "other"], 16)
    assert same_prefix == hashes
    second_block_differs = block_hashes([*tokens[:20], "x", *tokens[21:]], 16)
    assert second_block_differs[0] == hashes[0]
    assert second_block_differs[1] != hashes[1]
    first_block_differs = block_hashes(["x", *tokens[1:]], 16)
    assert first_block_differs[1] != hashes[1]  # the chain carries the difference forward
    assert block_hashes(tokens, 16, extra_key="adapter")[0] != hashes[0]


@pytest.mark.parametrize(
    ("matched", "prompt", "cached"),
    [(0, 48, 0), (1, 40, 16), (2, 40, 32), (3, 48, 32), (3, 49, 48), (5, 1, 0)],
)
def test_cached_prefix_always_recomputes_the_last_token(
    matched: int, prompt: int, cached: int
) -> None:
    assert cached_prefix_tokens(matched, prompt, 16) == cached


def test_prefix_cache_is_a_bounded_lru() -> None:
    cache = PrefixCache(capacity_blocks=3)
    cache.insert([1, 2, 3])
    assert cache.match([1, 2, 99, 3]) == 2  # stops at the first miss; 1 and 2 now recent
    cache.insert([4])
    assert len(cache) == 3
    assert 3 not in cache  # least recently used went first
    assert cache.match([1, 2, 4]) == 3
    assert cache.match([9, 1]) == 0
    cache.insert([5, 6, 7, 8])
    assert len(cache) == 3
    assert cache.match([6, 7, 8]) == 3


def test_prefix_cache_of_zero_blocks_holds_nothing() -> None:
    cache = PrefixCache(capacity_blocks=0)
    cache.insert([1, 2])
    assert len(cache) == 0
    assert cache.match([1]) == 0


def test_config_rejects_a_kv_cache_smaller_than_one_request() -> None:
    with pytest.raises(ValidationError, match="kv_capacity_tokens"):
        SimConfig(max_model_len=2048, kv_capacity_tokens=1024)


def _scheduler(**fields: object) -> Scheduler:
    base: dict[str, object] = {"block_size": 16, "prefix_caching": False}
    return Scheduler(SimConfig.model_validate(base | fields))


def test_admission_is_fifo_within_kv_capacity() -> None:
    scheduler = _scheduler(kv_capacity_tokens=64, max_model_len=64)  # 4 blocks
    a = SimRequest(prompt_tokens=20, max_tokens=8)
    b = SimRequest(prompt_tokens=20, max_tokens=8)
    c = SimRequest(prompt_tokens=5, max_tokens=8)
    for request in (a, b, c):
        scheduler.add(request)
    plan = scheduler.schedule()
    assert (plan.batch_size, plan.new_requests, plan.uncached_prefill_tokens) == (2, 2, 40)
    assert scheduler.used_blocks == 4
    assert scheduler.kv_usage == 1.0
    assert list(scheduler.waiting) == [c]  # 1 block would not fit
    assert c.state is RequestState.WAITING
    scheduler.abort(a)
    assert scheduler.used_blocks == 2
    plan = scheduler.schedule()
    assert (plan.batch_size, plan.new_requests, plan.uncached_prefill_tokens) == (2, 1, 5)
    assert scheduler.used_blocks == 3


def test_head_of_line_request_blocks_smaller_ones_behind_it() -> None:
    scheduler = _scheduler(kv_capacity_tokens=64, max_model_len=64)
    running = SimRequest(prompt_tokens=40, max_tokens=8)  # 3 blocks
    big = SimRequest(prompt_tokens=30, max_tokens=8)  # 2 blocks: does not fit
    small = SimRequest(prompt_tokens=4, max_tokens=8)  # 1 block: would fit
    for request in (running, big, small):
        scheduler.add(request)
    assert scheduler.schedule().batch_size == 1
    assert list(scheduler.waiting) == [big, small]


def test_max_num_seqs_bounds_the_batch() -> None:
    scheduler = _scheduler(max_num_seqs=2)
    requests = [SimRequest(prompt_tokens=4, max_tokens=4) for _ in range(3)]
    for request in requests:
        scheduler.add(request)
    assert scheduler.schedule().batch_size == 2
    assert list(scheduler.waiting) == requests[2:]


def test_finish_step_emits_one_token_each_and_retires_finished() -> None:
    scheduler = _scheduler()
    short = SimRequest(prompt_tokens=10, max_tokens=1, arrival=1.0)
    long = SimRequest(prompt_tokens=30, max_tokens=3, arrival=1.5)
    scheduler.add(short)
    scheduler.add(long)
    scheduler.schedule()
    result = scheduler.finish_step(now=2.0)
    assert result.tokens == 2
    assert result.prompt_tokens == 40
    assert result.ttfts == [1.0, 0.5]
    assert result.finished == [short]
    assert short.state is RequestState.FINISHED
    assert short.event.is_set()
    assert list(scheduler.running) == [long]
    assert scheduler.used_blocks == 2  # only `long`'s 31 tokens remain
    scheduler.schedule()
    second = scheduler.finish_step(now=2.1)
    assert (second.tokens, second.ttfts, second.prompt_tokens) == (1, [], 0)
    assert long.produced == 2


def test_kv_growth_preempts_the_newest_request() -> None:
    scheduler = _scheduler(kv_capacity_tokens=64, max_model_len=64)  # 4 blocks
    old = SimRequest(prompt_tokens=16, max_tokens=40)
    new = SimRequest(prompt_tokens=16, max_tokens=40)
    scheduler.add(old)
    scheduler.add(new)
    scheduler.schedule()
    assert scheduler.used_blocks == 2
    for _ in range(16):  # 32 tokens of context each: 2 blocks each
        scheduler.finish_step(now=0.0)
        plan = scheduler.schedule()
        assert plan.preempted == 0
    assert scheduler.used_blocks == 4
    scheduler.finish_step(now=0.0)  # 33 tokens each: both want a third block
    plan = scheduler.schedule()
    assert plan.preempted == 1
    assert scheduler.preemptions == 1
    assert list(scheduler.running) == [old]
    assert old.blocks == 3
    assert scheduler.used_blocks == 3
    assert list(scheduler.waiting) == [new]
    assert new.state is RequestState.WAITING
    assert new.produced == 17  # kept; readmission must prefill all 33 tokens (3 blocks)


def test_scheduler_prefix_cache_counts_queries_and_hits_in_tokens() -> None:
    scheduler = _scheduler(prefix_caching=True)
    tokens = [f"t{i}" for i in range(40)]
    first = SimRequest(prompt_tokens=40, max_tokens=1, block_hashes=block_hashes(tokens, 16))
    scheduler.add(first)
    assert scheduler.schedule().uncached_prefill_tokens == 40
    second = SimRequest(prompt_tokens=40, max_tokens=1, block_hashes=block_hashes(tokens, 16))
    scheduler.add(second)
    assert scheduler.schedule().uncached_prefill_tokens == 8
    assert second.cached_tokens == 32
    assert (scheduler.prefix_queries, scheduler.prefix_hits) == (80, 32)


def test_abort_of_a_waiting_request_and_double_abort() -> None:
    scheduler = _scheduler(max_num_seqs=1)
    running = SimRequest(prompt_tokens=4, max_tokens=4)
    queued = SimRequest(prompt_tokens=4, max_tokens=4)
    scheduler.add(running)
    scheduler.add(queued)
    scheduler.schedule()
    assert scheduler.abort(queued) is True
    assert not scheduler.waiting
    assert queued.state is RequestState.ABORTED
    assert queued.event.is_set()
    assert scheduler.abort(queued) is False
    assert scheduler.abort(running) is True
    assert scheduler.used_blocks == 0
    assert not scheduler.has_work()
