"""The chaos benchmark: 3 simulator engines behind the gateway, 300 concurrent chat
streams, one engine SIGKILLed mid-run and restarted on the same port.

    python -m loadtests.chaos.bench --out results/chaos

Checks, each counted in ``summary.md`` and ``result.json`` (see
``loadtests.chaos.report`` for how each is measured): (1) no client-visible error for
requests without a first token at the kill; (2) every stream in flight on the killed
engine continued to completion with every token in place, or ended with an error event
and ``[DONE]``; (3) none hung; (4) the dead engine got no traffic later than 1 s after
the kill; (5) it got traffic again after the restart. The gateway runs as its own process
with its default resilience settings (health checks every 1 s, breaker open 5 s). Exits 1
when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from loadtests.chaos.report import PHASES, ChaosReport, judge, percentile
from loadtests.chaos.run import ChaosPlan, ChaosRun, run_chaos
from loadtests.chaos.watch import Interval
from loadtests.fleet import engine_fleet, gateway_process, sim_launch

ENGINES = 3
SIM_ENGINE: dict[str, Any] = {"prefill_base_ms": 30, "decode_step_ms": 50, "max_num_seqs": 512}
"""Each engine: 30 ms prefill, then a token every 50 ms for every running stream (room for
all 300 streams on the two survivors)."""


def gateway_settings(engine_urls: Sequence[str]) -> dict[str, Any]:
    return {
        "default_engine": False, "access_log": False, "log_level": "warning",
        "health_interval_s": 1.0,
        "engines": [{"name": f"engine-{i}", "url": url} for i, url in enumerate(engine_urls)],
    }  # fmt: skip


async def bench(plan: ChaosPlan, logs: Path) -> ChaosRun:
    launches = [sim_launch({**SIM_ENGINE, "seed": seed}, logs / f"sim-{i}.log")
                for i, seed in enumerate(plan.seeds)]
    async with (engine_fleet(launches) as fleet,
                gateway_process(gateway_settings(fleet.urls), log_dir=logs) as gateway):
        return await run_chaos(gateway.url, fleet, plan)


def markdown(report: ChaosReport, run: ChaosRun) -> str:
    plan, f = run.plan, report.in_flight
    lines = [
        f"# Chaos: {plan.streams} streams, {len(plan.seeds)} engines, {plan.victim_name} "
        f"SIGKILLed at {run.kill:.1f} s, restarted at {run.restart:.1f} s",
        "",
        f"{report.requests} chat requests (max_tokens {plan.max_tokens[0]}-"
        f"{plan.max_tokens[1]}, exactly that many tokens each), sending stopped at "
        f"{run.stopped_sending:.1f} s, last answer at {run.ended:.1f} s.",
        "", "| check | measured | result |", "|---|---|---|",
        *(f"| {c.name} | {c.detail} | {'PASS' if c.passed else 'FAIL'} |"
          for c in report.checks),
        "", "## Requests by where they stood at the kill", "",
        "| phase | requests | ok | errors |", "|---|---|---|---|",
        *(f"| {p} | {g.total} | {g.ok} | {_failed(g.failed)} |"
          for p, g in report.phases.items()),
        "",
        f"In flight at the kill: {f.total} streams, {f.on_victim} on {plan.victim_name} "
        f"(its words in their first tokens): {f.continued} continued on another engine, "
        f"{f.completed} finished on it (all tokens sent before it died), {f.error_event} "
        f"error event + [DONE], other {_failed(f.victim_bad)}. Their longest pause between "
        f"two tokens: p50 {_ms(percentile(f.pauses_ms, 50))}, p99 "
        f"{_ms(percentile(f.pauses_ms, 99))}, max {_ms(max(f.pauses_ms, default=None))}.",
        "",
        f"## {plan.victim_name} seen from the gateway (/metrics every "
        f"{1000 * plan.poll_interval_s:.0f} ms)", "",
        f"- in flight on it at the last scrape before the kill: "
        f"{report.victim_in_flight_at_kill:.0f} (`sluice_engine_in_flight`)",
        f"- failed attempts on it from the kill to the restart: "
        f"{report.attempts_after_kill:.0f} (`sluice_upstream_errors_total`); the client saw "
        f"{f.on_victim - f.completed} of its streams broken",
        f"- last attempt on it: {_interval(report.stop_s)} after the kill; seen marked down "
        f"(`sluice_engine_up` 0) {_ms_s(report.marked_down_s)} and circuit open "
        f"{_ms_s(report.circuit_open_s)} after it",
        f"- restart: the new process answered /health {report.restart_s:.2f} s after it "
        "was started",
        f"- traffic back: first attempt on it {_interval(report.returned_s)} and first 200 "
        f"{_interval(report.first_ok_s)} after it was ready; "
        f"{report.victim_ok_after_restart:.0f} requests finished 200 on it "
        f"({report.client_served_by_victim} streams with its words seen by the client), "
        f"{report.victim_errors_after_restart:.0f} failures",
        "- gateway counters from the kill to the end: failovers "
        + ", ".join(f"{k} {v:.0f}" for k, v in report.failovers.items())
        + f"; retries {report.retries:.0f}; retry budget exhausted "
        f"{report.budget_exhausted:.0f}",
    ]
    return "\n".join(lines) + "\n"


def _failed(failed: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "0"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _ms_s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{1000 * seconds:.0f} ms"


def _interval(interval: Interval | None) -> str:
    if interval is None:
        return "never"
    return f"{1000 * interval.low:.0f}-{1000 * interval.high:.0f} ms"


def document(report: ChaosReport, run: ChaosRun) -> dict[str, Any]:
    """``result.json``: settings, timeline, every count, the failed requests and the
    killed engine's scraped series."""
    failed = [asdict(r) for r in run.records
              if r.failure is not None or r.error_event is not None or not r.done]
    return {
        "plan": asdict(run.plan), "engine": SIM_ENGINE, "cpus": os.cpu_count(),
        "gateway": gateway_settings([f"<engine {i}>" for i in range(len(run.plan.seeds))]),
        "timeline_s": {"kill": run.kill, "reaped": run.reaped, "restart": run.restart,
                       "restarted": run.restarted, "stopped_sending": run.stopped_sending,
                       "ended": run.ended},
        "passed": report.passed, "report": asdict(report),
        "phases_order": list(PHASES), "failed_requests": failed,
        "victim_series": [asdict(s) for s in run.snapshots],
        "scrape_failures": run.scrape_failures,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/chaos"))
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--kill-at", type=float, default=8.0, help="seconds into the run")
    parser.add_argument("--down", type=float, default=3.0, help="seconds before the restart")
    parser.add_argument("--after-restart", type=float, default=8.0,
                        help="seconds of load after the engine is back")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = replace(ChaosPlan(), streams=args.streams, kill_at_s=args.kill_at,
                   down_s=args.down, after_restart_s=args.after_restart,
                   engine_names=tuple(f"engine-{i}" for i in range(ENGINES)),
                   seeds=tuple(range(ENGINES)))
    run = asyncio.run(bench(plan, args.out / "logs"))
    report = judge(run)
    text = markdown(report, run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(document(report, run), indent=1) + "\n")
    (args.out / "summary.md").write_text(text)
    print(text)
    print(f"wrote {args.out}/result.json and summary.md")
    if not report.passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
