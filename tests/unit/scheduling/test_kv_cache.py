"""Scorer ``kv_cache`` alone."""

from __future__ import annotations

from gateway.scheduling.scorers.kv_cache import KvCache
from tests.unit.scheduling.fakes import Engine, cycle


def test_free_cache_scores_higher() -> None:
    scores = KvCache().score(cycle([Engine("a", kv_usage=0.9), Engine("b", kv_usage=0.25),
                                    Engine("c", kv_usage=1.2)]))
    assert [round(v, 6) for v in scores.values] == [0.1, 0.75, 0.0]
    assert scores.reason == "kv"
