"""The chaos test, small: an engine SIGKILLed under load and restarted on the same port.

Three simulator processes (distinct seeds, so every token's engine is known) behind an
in-process gateway, 24 closed-loop chat streams. ``loadtests.chaos.run`` runs the timeline,
``loadtests.chaos.report`` judges it; ``python -m loadtests.chaos.bench`` is the same at
full scale (300 streams). Health checks every 0.2 s and a 0.5 s breaker keep it short.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.chaos.report import judge
from loadtests.chaos.run import ChaosPlan, run_chaos
from loadtests.fleet import engine_fleet, sim_launch
from tests.conftest import StartGateway

SIM = {"prefill_base_ms": 5, "decode_step_ms": 15}
PLAN = ChaosPlan(
    streams=24, max_tokens=(15, 40), kill_at_s=1.5, down_s=0.5, after_restart_s=0.3,
    return_timeout_s=8.0, request_timeout_s=10.0, poll_interval_s=0.02,
    engine_names=("e0", "e1", "e2"), seeds=(0, 1, 2))


@pytest.mark.timeout(90)
async def test_killed_engine_is_survived_and_rejoins(start_gateway: StartGateway,
                                                     tmp_path: Path) -> None:
    launches = [sim_launch({**SIM, "seed": seed}, tmp_path / f"sim-{seed}.log")
                for seed in PLAN.seeds]
    async with engine_fleet(launches) as fleet:
        gateway = await start_gateway(fleet.urls, health_interval_s=0.2,
                                      resilience={"breaker": {"open_s": 0.5}})
        run = await run_chaos(gateway, fleet, PLAN)
    report = judge(run)
    lines = [f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in report.checks]
    print("\n".join(lines), f"gateway: failovers {report.failovers}, retries {report.retries}",
          sep="\n")
    assert report.passed, "\n".join(lines)
    assert report.in_flight.continued > 0  # failover, not only streams that were finishing
    assert report.victim_errors_after_restart == 0
