"""loadtests.routing_report and the pure parts of loadtests.routing_bench."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.arrivals import PoissonArrival
from loadtests.metrics import PREFIX_HITS, PREFIX_QUERIES
from loadtests.records import MetricSample, RequestRecord, RunResult
from loadtests.routing_bench import (
    SCENARIOS,
    gateway_settings,
    kv_capacity,
    multi_turn,
    parse_args,
    running_reserve,
    sizing,
)
from loadtests.routing_report import (
    BASELINE,
    Row,
    check_targets,
    fleet_hit_rate,
    markdown,
    round_up,
    working_set,
    write_plot,
)
from loadtests.runner import Scenario
from loadtests.workloads import MultiTurnWorkload, RandomWorkload, Request, RequestSource
from simulator.config import SimConfig
from simulator.protocol import parse_chat

A, B = "http://127.0.0.1:1", "http://127.0.0.1:2"


def final_turn(spec: MultiTurnWorkload) -> Request:
    """Drive one conversation to its last turn, each answer ``output_len`` words long."""
    source = RequestSource(spec, 0)
    request = source.take()
    assert request is not None
    while request.turn != spec.turns - 1:
        source.complete(request, " ".join(["word"] * spec.output_len))
        request = source.take()
        assert request is not None
    return request


@pytest.mark.parametrize("system_len", [0, 37])
def test_working_set_matches_the_simulators_token_count(system_len: int) -> None:
    spec = MultiTurnWorkload(users=1, turns=4, first_len=50, turn_len=7, output_len=11,
                             system_len=system_len)
    ws = working_set(spec)
    prompt = parse_chat(final_turn(spec).body, SimConfig(), ()).prompt_tokens
    assert ws.system_tokens + ws.conversation_tokens == prompt
    assert ws.system_tokens == (system_len + 4 if system_len else 0)


def test_working_set_total_counts_the_system_prompt_once() -> None:
    ws = working_set(MultiTurnWorkload(users=32, turns=8, system_len=1000, first_len=1200,
                                       turn_len=60, output_len=80))
    assert (ws.system_tokens, ws.conversation_tokens) == (1004, 2243)
    assert ws.total_tokens == 1004 + 32 * 2243 == 72_780


def test_working_set_of_completions() -> None:
    spec = MultiTurnWorkload(users=2, turns=3, first_len=10, turn_len=4, output_len=5,
                             system_len=6, endpoint="completions")
    ws = working_set(spec)
    prompt = final_turn(spec).body["prompt"]
    assert 1 + len(prompt.split()) == ws.system_tokens + ws.conversation_tokens
    assert ws.total_tokens == 6 + 2 * (1 + 10 + 2 * 9)


def test_round_up() -> None:
    assert [round_up(v, 16) for v in (0, 1, 16, 16.5, 33)] == [0, 16, 16, 32, 48]


def result_with(samples: list[MetricSample]) -> RunResult:
    record = RequestRecord(index=0, start=0.0, chunk_times=[0.1, 0.2], end=0.2,
                           completion_tokens=2)
    return RunResult("t", A, {}, "2026-01-01T00:00:00+00:00", 1.0, [record], samples)


def counters(source: str, points: list[tuple[float, float, float]]) -> list[MetricSample]:
    """Samples of both prefix counters: ``(t, hits, queries)``."""
    return [sample for t, hits, queries in points
            for sample in (MetricSample(t, source, PREFIX_HITS, hits),
                           MetricSample(t, source, PREFIX_QUERIES, queries))]


def test_fleet_hit_rate_sums_the_increase_over_engines() -> None:
    samples = counters(A, [(0, 100, 200), (1, 160, 300)]) + counters(B, [(0, 0, 0), (1, 20, 100)])
    hits = fleet_hit_rate(result_with(samples), [A, B])
    assert hits is not None
    assert (hits.hits, hits.queries) == (80, 200)
    assert hits.rate == pytest.approx(0.4)


def test_fleet_hit_rate_counts_across_a_restart() -> None:
    samples = counters(A, [(0, 50, 100), (1, 90, 150), (2, 10, 40)])  # reset after t=1
    hits = fleet_hit_rate(result_with(samples), [A])
    assert hits is not None
    assert (hits.hits, hits.queries) == (40 + 10, 50 + 40)


def test_fleet_hit_rate_needs_every_engine_scraped_twice() -> None:
    assert fleet_hit_rate(result_with(counters(A, [(0, 1, 2), (1, 2, 4)])), [A, B]) is None
    assert fleet_hit_rate(result_with(counters(A, [(0, 1, 2)])), [A]) is None


def row(name: str, ttft_p50: float, hit_rate: float | None) -> Row:
    return Row(name, 4, 10, 0, ttft_p50, 2 * ttft_p50, 12.0, 13.0, 500.0, 5.0, hit_rate,
               None if hit_rate is None else 100 * hit_rate, None if hit_rate is None else 100)


def test_targets_met() -> None:
    rows = [row(BASELINE, 200, 0.90), row("round_robin", 300, 0.50), row("prefix", 100, 0.86)]
    ttft, hits = check_targets(rows)
    assert ttft.value == pytest.approx(3.0)
    assert ttft.met is True
    assert hits.value == pytest.approx(0.86 / 0.90)
    assert hits.met is True


def test_targets_not_met_or_not_measured() -> None:
    rows = [row(BASELINE, 200, 0.90), row("round_robin", 290, 0.50), row("prefix", 100, 0.85)]
    assert [check.met for check in check_targets(rows)] == [False, False]
    assert [check.met for check in check_targets(rows[1:])] == [False, None]
    assert [check.met for check in check_targets([rows[0]])] == [None, None]


def test_markdown_has_a_row_per_run_and_a_verdict_per_target() -> None:
    rows = [row(BASELINE, 200, 0.9), row("round_robin", 300, 0.5), row("prefix", 150, None)]
    text = markdown(rows, check_targets(rows))
    assert "| round_robin | 4 | 10 / 0 | 300.0 | 600.0 | 12.0 | 13.0 | 500 | 5.00 | 50.0% |" in text
    assert "| prefix | 4 | 10 / 0 | 150.0 |" in text
    assert text.count("| - |") == 1
    assert "TTFT p50 round_robin / prefix: 2.00 (goal >= 3x): **NOT met**" in text
    assert "(goal >= 95%): **not measured**" in text


def test_write_plot(tmp_path: Path) -> None:
    result = result_with([])
    path = write_plot([(row("prefix", 100, 0.8), result), (row("x", 1, None), result)],
                      tmp_path / "routing.png")
    assert path.stat().st_size > 1000


def test_bundled_scenarios_are_multi_turn_with_sessions() -> None:
    for name in ("routing_multiturn", "routing_real"):
        spec = multi_turn(Scenario.from_yaml(SCENARIOS / f"{name}.yaml"))
        assert spec.system_len > 0
        assert spec.session_user


def test_multi_turn_refuses_other_workloads() -> None:
    scenario = Scenario(workload=RandomWorkload(), arrival=PoissonArrival(rate=1),
                        num_requests=1)
    with pytest.raises(ValueError, match="multi_turn"):
        multi_turn(scenario)


def test_default_kv_capacity_is_the_share_of_the_working_set_in_blocks() -> None:
    args = parse_args([])
    scenario = Scenario.from_yaml(args.scenario)
    assert (args.engines, args.strategies[0], args.real) == (4, "round_robin", False)
    assert kv_capacity(args, working_set(multi_turn(scenario)), scenario) == round_up(
        72_780 * 0.375, 32)
    given = parse_args(["--kv-capacity-tokens", "5000"])
    assert kv_capacity(given, working_set(multi_turn(scenario)), scenario) == 5000


def test_real_engines_get_room_for_their_running_requests() -> None:
    args = parse_args(["--real"])
    scenario = Scenario.from_yaml(args.scenario)
    ws = working_set(multi_turn(scenario))
    assert args.engines == 2
    assert args.kv_share == 0.75
    assert kv_capacity(args, ws, scenario) > round_up(ws.total_tokens * 0.75, 32)


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--strategies", "round_robin,fastest"])


def test_gateway_settings_route_with_the_strategy() -> None:
    settings = gateway_settings([A, B], "session")
    assert settings["routing"] == {"default": {"strategy": "session"}}
    assert [e["url"] for e in settings["engines"]] == [A, B]
    assert settings["default_engine"] is False


def test_sizing_line_states_working_set_and_cache_shares() -> None:
    args = parse_args(["--real"])
    scenario = Scenario.from_yaml(args.scenario)
    ws = working_set(multi_turn(scenario))
    reserve = running_reserve(args, ws, scenario)
    assert reserve == round_up(2 * (304 + 469 + 16) * 1.25, 32)
    line = sizing(ws, 5932 + reserve, reserve, 2)
    assert line.startswith("working set: 5,932 tokens (system 304 + 12 conversations x 469)")
    assert "caching 100.0% of the working set; 2 engines: 200.0%" in line
    assert running_reserve(parse_args([]), ws, scenario) == 0
