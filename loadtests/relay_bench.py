"""Relay overhead: the same simulator engine hit directly and through the gateway.

Every target is measured alternately in one run (so both see the same machine state),
for several rounds; medians are reported. The engine is the simulator with a fixed
pace (first token after ``prefill_ms``, then one token every ``step_ms`` for every
running stream), so any difference between the targets is the gateway's cost. The loads
are the scenarios ``loadtests/scenarios/relay_*.yaml``, run with the harness.

    python -m loadtests.relay_bench --out results/relay_bench.json

All traffic stays on 127.0.0.1; every run is bounded by request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from loadtests.fleet import engine_fleet, gateway_process, sim_launch
from loadtests.metrics import summarize
from loadtests.runner import Scenario, run

SCENARIOS = [Path(__file__).parent / "scenarios" / f"relay_{name}.yaml"
             for name in ("50x128", "200x256")]


@asynccontextmanager
async def start_processes(prefill_ms: float, step_ms: float,
                          workdir: Path) -> AsyncIterator[tuple[int, str, str]]:
    """A simulator engine and a gateway in front of it, each in its own process: yields
    the gateway's pid, the engine's URL and the gateway's once both are ready."""
    sim = sim_launch({"model": "sim-model", "prefill_base_ms": prefill_ms,
                      "decode_step_ms": step_ms, "max_num_seqs": 4096})
    async with engine_fleet([sim]) as fleet, gateway_process(
            {"engines": [{"name": "sim", "url": sim.url}]}, log_dir=workdir) as gateway:
        yield gateway.pid, fleet.urls[0], gateway.url


async def one_round(target: str, url: str, scenario: Scenario) -> dict[str, Any]:
    summary = summarize(await run(target, url, scenario, progress=False))
    return {"target": target, "scenario": scenario.name,
            "tok_per_s": summary.output_throughput,
            "ttft_p50_ms": summary.ttft_ms.percentiles["p50"],
            "ttft_p99_ms": summary.ttft_ms.percentiles["p99"],
            "errors": summary.failed}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [Scenario.model_validate(yaml.safe_load(p.read_text())) for p in SCENARIOS]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with start_processes(args.prefill_ms, args.step_ms, Path(tmp)) as (
                gateway_pid, direct, gateway):
            targets = [("direct", direct), ("gateway", gateway)]
            for scenario in scenarios:
                for index in range(args.rounds):
                    for target, url in targets if index % 2 == 0 else targets[::-1]:
                        row = await one_round(target, url, scenario)
                        rounds.append(row)
                        print(f"  {scenario.name} {target:8s} {row['tok_per_s']:9.0f} tok/s "
                              f"ttft p50 {row['ttft_p50_ms']:7.1f} ms "
                              f"p99 {row['ttft_p99_ms']:7.1f} ms errors {row['errors']}",
                              flush=True)
            if args.profile:
                await profile_gateway(gateway_pid, gateway, scenarios[-1], Path(args.profile))
    return {"config": {"prefill_ms": args.prefill_ms, "step_ms": args.step_ms,
                       "rounds": args.rounds, "cpus": os.cpu_count()},
            "rounds": rounds, "summary": summarize_rounds(rounds, scenarios)}


async def profile_gateway(pid: int, url: str, scenario: Scenario, out: Path) -> None:
    """A py-spy speedscope profile of the gateway process during one round."""
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    spy = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--output", str(out), "--format", "speedscope",
        "--rate", "200", "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1)
    await one_round("gateway", url, scenario)
    spy.send_signal(2)
    await asyncio.wait_for(spy.wait(), 60)
    print(f"profile written to {out}")


def summarize_rounds(rounds: list[dict[str, Any]],
                     scenarios: list[Scenario]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        def med(target: str, field: str, name: str = scenario.name) -> float:
            return float(statistics.median(
                r[field] for r in rounds if r["target"] == target and r["scenario"] == name))
        rows.append({
            "scenario": scenario.name,
            "direct_tok_s": med("direct", "tok_per_s"),
            "gateway_tok_s": med("gateway", "tok_per_s"),
            "throughput_ratio": med("gateway", "tok_per_s") / med("direct", "tok_per_s"),
            "direct_ttft_p50_ms": med("direct", "ttft_p50_ms"),
            "added_ttft_p50_ms": med("gateway", "ttft_p50_ms") - med("direct", "ttft_p50_ms"),
            "added_ttft_p99_ms": med("gateway", "ttft_p99_ms") - med("direct", "ttft_p99_ms"),
            "errors": sum(r["errors"] for r in rounds if r["scenario"] == scenario.name),
        })
    return rows


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| load | direct tok/s | gateway tok/s | ratio | TTFT p50 direct | "
             "added TTFT p50 | added TTFT p99 | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(
            f"| {row['scenario']} | {row['direct_tok_s']:,.0f} | {row['gateway_tok_s']:,.0f} | "
            f"{100 * row['throughput_ratio']:.1f} % | {row['direct_ttft_p50_ms']:.1f} ms | "
            f"{row['added_ttft_p50_ms']:+.1f} ms | {row['added_ttft_p99_ms']:+.1f} ms | "
            f"{row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill-ms", type=float, default=20.0)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("results/relay_bench.json"))
    parser.add_argument("--profile", help="write a py-spy speedscope profile of the gateway "
                                          "under the largest load to this file")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result["summary"]))


if __name__ == "__main__":
    main()
