"""Scorer ``prefix`` alone, on an index fed by hand."""

from __future__ import annotations

from gateway.config.fleet import PrefixIndexSettings
from gateway.scheduling.producers import PrefixCacheIndexer
from gateway.scheduling.scorers.prefix import Prefix
from tests.unit.scheduling.fakes import Engine, cycle, request

HISTORY = "system prompt. " + "a long conversation. " * 6


def indexer() -> PrefixCacheIndexer:
    return PrefixCacheIndexer(PrefixIndexSettings(block_chars=8))


def test_a_longer_match_scores_higher_than_a_shorter_one() -> None:
    index = indexer()
    engines = [Engine("short"), Engine("long"), Engine("none")]
    index.attempt_opened(request(HISTORY[:40]), engines[0])
    index.attempt_opened(request(HISTORY), engines[1])
    scores = Prefix(index).score(cycle(engines, request(HISTORY + " and more")))
    short, long, none = scores.values
    assert long > short > none == 0.0
    assert short == len(index.hashes(request(HISTORY[:40]))) / len(index.hashes(request(
        HISTORY + " and more")))
    assert (scores.reason, scores.affinity) == ("prefix_hit", True)


def test_miss_and_short_prompts() -> None:
    engines = [Engine("a"), Engine("b")]
    assert Prefix(indexer()).score(cycle(engines, request(HISTORY))).reason == "prefix_miss"
    short = Prefix(indexer()).score(cycle(engines, request("h")))
    assert (list(short.values), short.reason) == ([0.0, 0.0], "prefix_short")


def test_the_guard_zeroes_an_engine_over_its_cap() -> None:
    index = indexer()
    engines = [Engine("hot", load=9), Engine("cold"), Engine("other")]
    index.attempt_opened(request(HISTORY), engines[0])
    index.attempt_opened(request(HISTORY[:40]), engines[1])
    # cap = max(ceil(1.25 * 10 / 3), 8) = 8 < 9 + 1
    scores = Prefix(index, load_factor=1.25, affinity_floor=8).score(
        cycle(engines, request(HISTORY)))
    assert scores.values[0] == 0.0
    assert scores.values[1] > 0.0
    assert scores.reason == "prefix_guarded"


def test_the_scorer_reads_the_index_and_never_writes_it() -> None:
    index = indexer()
    Prefix(index).score(cycle([Engine("a"), Engine("b")], request(HISTORY)))
    assert index.index.size("a") == index.index.size("b") == 0
