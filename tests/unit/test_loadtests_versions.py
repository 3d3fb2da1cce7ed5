"""loadtests.versions_bench and versions_report: a rollout case's figures and its table
row, from a rollout as the admin API shows it (no gateway is started here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests.fleet import GatewayProcess
from loadtests.versions_bench import Answer, Case, summary
from loadtests.versions_report import markdown

ONE, TWO = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


@pytest.fixture
def gateways(tmp_path: Path) -> dict[str, GatewayProcess]:
    """Two finished processes, for their pids."""
    processes = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    for process in processes:
        process.wait(timeout=30)
    return {name: GatewayProcess(url, process, tmp_path / f"{name}.yaml", tmp_path / "log")
           for name, url, process in zip(("gateway-1", "gateway-2"), (ONE, TWO), processes,
                                         strict=True)}


def figures(requests: int, errors: int, p99: float | None) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "error_rate": errors / max(1, requests),
            "ttft_p50_s": p99, "ttft_p99_s": p99}


def decision(at: float, action: str, percent: float, reason: str = "",
             new: dict[str, Any] | None = None, base: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    return {"at": at, "step": 0, "percent": percent, "action": action, "reason": reason,
            "new": new or {}, "base": base or {}}


SHADOW = {"summary": {}, "metrics": {k: 0.0 for k in (
    "shadow_ok", "shadow_error", "shadow_dropped", "divergence_status", "divergence_tokens",
    "divergence_text", "text_similarity_mean", "latency_ratio_mean")}}


def test_a_rolled_back_case_ends_on_its_breach_and_its_figures(
        gateways: dict[str, GatewayProcess]) -> None:
    why = "TTFT p99 512 ms > 1.5 x the base's 83 ms + 50 ms"
    state = {"state": "rolled_back", "owner": f"{gateways['gateway-1'].pid}-abc",
             "decisions": [
                 decision(103.0, "step", 10, "split"),
                 decision(105.0, "extend", 10, "4 of 20", figures(4, 0, 0.5), figures(40, 0, 0.08)),
                 decision(106.25, "breach", 10, why, figures(20, 0, 0.512), figures(283, 0, 0.083)),
                 decision(106.26, "rollback", 10, why)]}
    answers = [Answer(101.5, "v1", 200, ONE), Answer(104.0, "v2", 502, TWO),
               Answer(104.5, "v2", 200, ONE), Answer(105.5, "?", 0, TWO)]

    case = summary(Case("slow", "v2 slow", {"slow_token_ms": 50.0}), state, answers, 100.0,
                   gateways, None)

    assert case["ending"]["action"] == "breach"
    assert case["ending"]["reason"] == why
    assert case["ending"]["new"]["ttft_p99_s"] == 0.512
    assert case["ended_after_s"] == pytest.approx(3.26)
    assert case["driven_by"] == case["started_by"] == "gateway-1"
    assert case["requests_by_version"] == {"?": 1, "v1": 1, "v2": 2}
    assert case["requests_by_gateway"] == {"gateway-1": 2, "gateway-2": 2}
    assert (case["failed"], case["failed_on_canary"], case["failed_other"]) == (2, 1, 1)
    assert [r["v2"] for r in case["per_second"]] == [0, 0, 0, 0, 2, 0]
    row = markdown({"rollout": {"slow": case}, "shadow": SHADOW}).splitlines()[2]
    assert row.startswith("| slow | `slow_token_ms` 50 | rolled_back | 3.26 s | ")
    assert f"breach at 10 %: {why} | 20, 0.0%, 512 / 512 ms | 283, 0.0%, 83 / 83 ms" in row
    assert row.endswith("| 1 / 2 | 1 | 1 | gateway-1 |")


def test_a_taken_over_case_names_the_gateway_that_finished_it(
        gateways: dict[str, GatewayProcess]) -> None:
    two = gateways["gateway-2"].pid
    state = {"state": "done", "owner": f"{two}-def", "decisions": [
        decision(103.0, "step", 10), decision(105.0, "promote", 10, "within bounds",
                                              figures(25, 0, 0.06), figures(200, 0, 0.06)),
        decision(105.0, "step", 50), decision(106.4, "resume", 50, f"replica {two}-def took "
                                              "over from 1-abc, whose lease lapsed"),
        decision(107.0, "promote", 50, "within bounds", figures(90, 0, 0.06),
                 figures(90, 0, 0.06)),
        decision(107.0, "step", 100),
        decision(109.0, "promote", 100, "within bounds", figures(200, 0, 0.06), {}),
        decision(109.0, "done", 100, "v2 has all the traffic")]}

    case = summary(Case("takeover", "healthy v2", kill_driver=True), state, [], 100.0,
                   gateways, ("gateway-1", 105.6))

    assert case["driven_by"] == "gateway-2"
    assert case["resumed"] == [f"replica {two}-def took over from 1-abc, whose lease lapsed"]
    assert case["ending"]["action"] == "promote"
    assert case["ending"]["percent"] == 100
    row = markdown({"rollout": {"takeover": case}, "shadow": SHADOW}).splitlines()[2]
    assert "| gateway-1 SIGKILLed at 2.6 s | done | 6.00 s | promote at 100 %: within " \
           "bounds | 200, 0.0%, 60 / 60 ms | - |" in row
    assert row.endswith("| gateway-2 (took over from gateway-1) |")
