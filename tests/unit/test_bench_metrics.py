"""Benchmark metrics on hand-made timelines, with values worked out by hand.

Times are multiples of 1/16 s, exact in binary floating point, so most expected values
are exact; statistics with irrational results are given in closed form.
"""

from __future__ import annotations

import math

import pytest

from loadtests.metrics import (
    Distribution,
    Slo,
    counter_increase,
    counter_rate,
    prefix_hit_rate,
    request_latency,
    series_by_name,
    summarize,
)
from loadtests.records import MetricSample, RequestRecord, RunResult


def timeline() -> RunResult:
    """Three successes and three failures over 4 s.

    ok0: TTFT 125, E2EL 750 (last chunk; ``end`` is later), TPOT 625/2, ITLs 250, 375.
    ok1: TTFT 250, E2EL 500, TPOT 250/4 (5 tokens in 2 chunks), ITL 250.
    ok2: TTFT 500, E2EL 500, one token: no TPOT, no ITL.
    """
    records = [
        RequestRecord(0, 0.0, [0.125, 0.375, 0.75], 0.875, prompt_tokens=10, completion_tokens=3),
        RequestRecord(1, 1.0, [1.25, 1.5], 1.5625, prompt_tokens=20, completion_tokens=5),
        RequestRecord(2, 2.0, [2.5], 2.625, prompt_tokens=30, completion_tokens=1),
        RequestRecord(3, 0.5, [], 0.5625, error="http_429"),
        RequestRecord(4, 1.5, [1.75, 1.8125], None, 40, 2, error="timeout"),
        RequestRecord(5, 3.0, [], 3.25, prompt_tokens=50, completion_tokens=0),
    ]
    return RunResult("gateway", "http://gw", {}, "2025-01-01T00:00:00+00:00", 4.0, records)


def test_counts_and_errors_by_type() -> None:
    summary = summarize(timeline())
    assert summary.completed == 3
    assert summary.failed == 3
    assert summary.errors_by_type == {"http_429": 1, "no_output": 1, "timeout": 1}


def test_request_without_end_or_error_is_incomplete() -> None:
    result = RunResult("t", "u", {}, "", 1.0, [RequestRecord(0, 0.0, [0.5])])
    summary = summarize(result)
    assert (summary.completed, summary.errors_by_type) == (0, {"incomplete": 1})


def test_throughputs_count_successful_requests_only() -> None:
    summary = summarize(timeline())
    assert summary.duration_s == 4.0
    assert summary.total_input_tokens == 60
    assert summary.total_output_tokens == 9
    assert summary.request_throughput == 0.75
    assert summary.output_throughput == 2.25
    assert summary.total_token_throughput == 17.25


def test_ttft() -> None:
    ttft = summarize(timeline()).ttft_ms  # [125, 250, 500]
    assert (ttft.min, ttft.median, ttft.max) == (125.0, 250.0, 500.0)
    assert ttft.mean == pytest.approx(875 / 3, rel=1e-12)
    assert ttft.std == pytest.approx(125 * math.sqrt(14) / 3, rel=1e-12)  # ddof=0
    # Linear interpolation at rank (n-1)*p/100 = 2p/100 between 250 and 500.
    assert ttft.percentiles == pytest.approx({"p50": 250.0, "p90": 450.0, "p95": 475.0,
                                              "p99": 495.0}, rel=1e-12)  # fmt: skip


def test_e2el_ends_at_the_last_output_chunk_like_vllm() -> None:
    e2el = summarize(timeline()).e2el_ms  # [750, 500, 500], not end - start (875 for ok0)
    assert (e2el.min, e2el.median, e2el.max) == (500.0, 500.0, 750.0)
    assert e2el.mean == pytest.approx(1750 / 3, rel=1e-12)
    assert e2el.percentiles["p90"] == pytest.approx(700.0, rel=1e-12)


def test_tpot_skips_one_token_requests() -> None:
    tpot = summarize(timeline()).tpot_ms  # [312.5, 62.5]
    assert (tpot.min, tpot.max, tpot.mean, tpot.median, tpot.std) == (
        62.5, 312.5, 187.5, 187.5, 125.0,
    )  # fmt: skip
    assert tpot.percentiles["p90"] == pytest.approx(287.5, rel=1e-12)
    assert tpot.percentiles["p99"] == pytest.approx(310.0, rel=1e-12)


def test_itl_pools_gaps_of_successful_requests() -> None:
    itl = summarize(timeline()).itl_ms  # [250, 375, 250]; the timeout's 62.5 is excluded
    assert (itl.min, itl.median, itl.max) == (250.0, 250.0, 375.0)
    assert itl.mean == pytest.approx(875 / 3, rel=1e-12)
    assert itl.std == pytest.approx(125 * math.sqrt(2) / 3, rel=1e-12)
    assert itl.percentiles["p90"] == pytest.approx(350.0, rel=1e-12)
    assert itl.percentiles["p99"] == pytest.approx(372.5, rel=1e-12)


def test_request_latency_of_one_record() -> None:
    latency = request_latency(timeline().records[0])
    assert latency is not None
    assert latency == (0.0, 0.125, 0.75, 0.3125, [0.25, 0.375])
    assert request_latency(timeline().records[3]) is None


def test_percentile_keys_follow_the_requested_percentiles() -> None:
    summary = summarize(timeline(), percentiles=(25, 99.9))
    # [125, 250, 500]: rank 0.5 -> 187.5; rank 1.998 -> 250 + 0.998 * 250.
    assert summary.ttft_ms.percentiles == pytest.approx({"p25": 187.5, "p99.9": 499.5})


@pytest.mark.parametrize("bad", [-1, 100.5])
def test_percentiles_out_of_range_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="within"):
        summarize(timeline(), percentiles=(50, bad))


def test_empty_run_gives_zeros() -> None:
    summary = summarize(RunResult("t", "u", {}, "", 0.0, []), slos=Slo(ttft_ms=1))
    assert (summary.completed, summary.failed, summary.errors_by_type) == (0, 0, {})
    assert summary.request_throughput == summary.output_throughput == 0.0
    assert summary.total_token_throughput == 0.0
    assert summary.goodput == 0.0
    zeros = Distribution(mean=0, median=0, std=0, min=0, max=0,
                         percentiles={"p50": 0, "p90": 0, "p95": 0, "p99": 0})  # fmt: skip
    assert summary.ttft_ms == summary.tpot_ms == summary.itl_ms == summary.e2el_ms == zeros


def test_all_failed_run_has_zero_latencies_but_counts_failures() -> None:
    result = timeline()
    result.records = result.records[3:]
    summary = summarize(result)
    assert (summary.completed, summary.failed) == (0, 3)
    assert summary.request_throughput == 0.0
    assert summary.e2el_ms.max == 0.0


def test_no_slo_means_no_goodput() -> None:
    assert summarize(timeline()).goodput is None


@pytest.mark.parametrize(
    ("slo", "good"),
    [
        (Slo(ttft_ms=250), 2),  # 125 and 250 (bound included); 500 fails
        (Slo(tpot_ms=50), 1),  # 312.5 and 62.5 fail; the one-token request passes
        (Slo(tpot_ms=62.5), 2),
        (Slo(e2el_ms=800), 3),  # ok0 passes on its last chunk (750), not its end (875)
        (Slo(e2el_ms=600), 2),
        (Slo(e2el_ms=499), 0),
        (Slo(ttft_ms=250, e2el_ms=600), 1),  # only ok1 meets both
        (Slo(ttft_ms=1000, tpot_ms=1000, e2el_ms=1000), 3),
    ],
)
def test_goodput_per_slo(slo: Slo, good: int) -> None:
    summary = summarize(timeline(), slos=slo)
    assert summary.goodput == good / 4.0
    assert summary.slo == slo


def test_slo_parse_vllm_syntax() -> None:
    assert Slo.parse("ttft:500 tpot:50 e2el:3000") == Slo(ttft_ms=500, tpot_ms=50, e2el_ms=3000)
    assert Slo.parse(["ttft:500", "e2el:2.5"]) == Slo(ttft_ms=500, e2el_ms=2.5)
    assert Slo.parse("  tpot:0 ") == Slo(tpot_ms=0)
    assert Slo.parse("ttft:500 tpot:50").spec() == "ttft:500 tpot:50"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty SLO spec"),
        ([], "empty SLO spec"),
        ("ttft", "expected KEY:VALUE"),
        ("latency:5", "expected KEY:VALUE"),
        ("ttft:abc", "not a number"),
        ("ttft:", "not a number"),
        ("ttft:-1", "finite and >= 0"),
        ("ttft:inf", "finite and >= 0"),
        ("ttft:1 ttft:2", "given twice"),
    ],
)
def test_slo_parse_refuses_bad_input(spec: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Slo.parse(spec)


def scraped() -> RunResult:
    samples = [
        MetricSample(2.0, "e0", "vllm:prefix_cache_hits_total", 190),
        MetricSample(0.0, "e0", "vllm:prefix_cache_hits_total", 100),
        MetricSample(1.0, "e0", "vllm:prefix_cache_hits_total", 150),
        MetricSample(0.0, "e0", "vllm:prefix_cache_queries_total", 200),
        MetricSample(2.0, "e0", "vllm:prefix_cache_queries_total", 400),
        MetricSample(0.0, "e1", "vllm:prefix_cache_hits_total", 5),
        MetricSample(1.0, "e1", "vllm:prefix_cache_hits_total", 5),
        MetricSample(0.0, "e1", "vllm:prefix_cache_queries_total", 7),
        MetricSample(1.0, "e1", "vllm:prefix_cache_queries_total", 7),
    ]
    return RunResult("t", "u", {}, "", 2.0, [], series=samples)


def test_series_by_name_groups_and_sorts_by_time() -> None:
    series = series_by_name(scraped())
    assert series[("e0", "vllm:prefix_cache_hits_total")] == [(0.0, 100), (1.0, 150), (2.0, 190)]
    assert series[("e1", "vllm:prefix_cache_queries_total")] == [(0.0, 7), (1.0, 7)]
    assert len(series) == 4


def test_prefix_hit_rate_from_counter_deltas() -> None:
    assert prefix_hit_rate(scraped(), "e0") == 90 / 200
    assert prefix_hit_rate(scraped(), "e1") is None  # no query during the run
    assert prefix_hit_rate(scraped(), "missing") is None


def test_counter_increase_survives_a_reset() -> None:
    assert counter_increase([(0, 10), (1, 15), (2, 3), (3, 8)]) == 5 + 3 + 5
    assert counter_increase([(0, 10)]) is None


def test_counter_rate_per_interval() -> None:
    assert counter_rate([(0, 0), (2, 10), (4, 10), (5, 4)]) == [(2, 5.0), (4, 0.0), (5, 4.0)]
