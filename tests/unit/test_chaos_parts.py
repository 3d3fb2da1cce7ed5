"""The chaos test's pure parts: reading engines from words, and the traffic timeline."""

from __future__ import annotations

from loadtests.chaos.report import Segment, segment
from loadtests.chaos.watch import Snapshot, first_after, parse_snapshot, traffic_stop

A = [" a0", " a1", " a2", " a3", " a4"]
B = [" b0", " b1", " b2", " b3", " b4"]


def test_a_continued_stream_reads_as_two_runs_switching_in_place() -> None:
    tokens = [*A[:2], *B[2:]]
    assert segment(tokens, [A, B]) == [Segment(frozenset({0}), 0, 2),
                                       Segment(frozenset({1}), 2, 3)]


def test_a_repeated_or_lost_token_matches_no_engine() -> None:
    assert segment([*A[:2], *B[1:]], [A, B]) is None  # B's token 1 repeated at position 2
    assert segment([*A, " a5"], [A, B]) is None  # beyond max_tokens


def test_a_word_both_engines_share_keeps_both_candidates() -> None:
    shared = [" s", *B[1:]]
    assert segment([" s", *A[1:]], [[" s", *A[1:]], shared]) == [
        Segment(frozenset({0}), 0, 5)]


def snap(sent: float, errors: float, in_flight: float, ok: float = 0.0) -> Snapshot:
    return Snapshot(sent, sent + 0.01, errors=errors, ok=ok, in_flight=in_flight)


def test_traffic_stops_at_the_first_scrape_that_sees_it_idle_for_good() -> None:
    snaps = [snap(0.9, 0, 5), snap(1.05, 3, 0), snap(1.1, 4, 1), snap(1.2, 5, 0),
             snap(1.3, 5, 0), snap(3.0, 5, 0)]
    stop = traffic_stop(snaps, kill=1.0, restart=2.0)
    assert stop is not None
    assert (round(stop.low, 3), round(stop.high, 3)) == (0.1, 0.21)
    assert traffic_stop(snaps[:3], kill=1.0, restart=2.0) is None  # busy at the last scrape


def test_traffic_returns_with_a_request_in_flight_or_a_200() -> None:
    snaps = [snap(1.9, 5, 0, ok=10), snap(2.1, 5, 0, ok=10), snap(2.3, 5, 1, ok=10),
             snap(2.5, 5, 0, ok=11)]
    busy = first_after(snaps, 2.0, busy=True)
    ok = first_after(snaps, 2.0, busy=False)
    assert busy is not None
    assert ok is not None
    assert (round(busy.low, 3), round(busy.high, 3)) == (0.1, 0.31)
    assert (round(ok.low, 3), round(ok.high, 3)) == (0.3, 0.51)


def test_snapshot_reads_the_engine_and_fleet_series() -> None:
    text = "\n".join([
        'sluice_upstream_errors_total{engine="e0",kind="EngineError"} 3.0',
        'sluice_upstream_errors_total{engine="e0",kind="EngineUnavailable"} 1.0',
        'sluice_upstream_errors_total{engine="e1",kind="EngineError"} 7.0',
        'sluice_requests_total{model="m",engine="e0",endpoint="chat",status="200"} 5.0',
        'sluice_requests_total{model="m",engine="e0",endpoint="chat",status="502"} 2.0',
        'sluice_engine_in_flight{engine="e0"} 4.0',
        'sluice_engine_up{engine="e0"} 1.0',
        'sluice_failovers_total{model="m",outcome="continued",version="none"} 6.0',
        'sluice_retries_total{model="m",version="none"} 2.0',
    ]) + "\n"
    s = parse_snapshot(text, "e0", 1.0, 1.5)
    assert (s.errors, s.ok, s.in_flight, s.up, s.retries) == (4.0, 5.0, 4.0, 1.0, 2.0)
    assert s.failovers == {"continued": 6.0}
