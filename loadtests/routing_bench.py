"""Routing strategies compared on one multi-turn workload with a shared system prompt.

The same scenario (same seed, so the same requests) runs through a fresh gateway per
strategy (``routing: {default: {strategy: ...}}``) in front of a fresh fleet, so every
strategy starts with cold caches; and once directly against ONE engine whose KV cache
holds everything, for the best prefix-cache hit rate the workload allows. Per run: TTFT
p50/p90, ITL and TPOT p50, throughput, and the engines' own prefix-cache hit rate.

    python -m loadtests.routing_bench --out results/routing          # 4 simulator engines
    python -m loadtests.routing_bench --real --out results/routing_real   # 2 vLLM CPU engines

Simulated engines follow llm-d's inference-sim profile of an 8B model on an H100
(``H100_8B``). Each engine's KV cache holds ``--kv-share`` (default 1.5 / engines) of the
conversations' working set, so the fleet holds all of it only when each conversation stays
on one engine. Real engines (``--real``, see ``loadtests/real_engines.py``) keep running
across strategies, with their prefix caches reset before every run; they also get room for
their running requests, which vLLM keeps in the same cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests.fleet import engine_fleet, gateway_process, sim_fleet
from loadtests.metrics import summarize
from loadtests.plots import write_plots
from loadtests.real_engines import real_launches, reset_prefix_caches, warm_up
from loadtests.records import RunResult
from loadtests.report import SCHEMA, run_document
from loadtests.report import markdown as harness_markdown
from loadtests.routing_report import (
    BASELINE,
    Row,
    WorkingSet,
    check_targets,
    fleet_hit_rate,
    make_row,
    markdown,
    round_up,
    working_set,
    write_plot,
)
from loadtests.runner import Scenario, run
from loadtests.workloads import LoraMixWorkload, MultiTurnWorkload

SCENARIOS = Path(__file__).parent / "scenarios"
STRATEGIES = ("round_robin", "least_loaded", "session", "prefix")
H100_8B: dict[str, Any] = {
    "prefill_base_ms": 30, "prefill_per_token_ms": 0.25, "decode_step_ms": 12,
    "decode_slowdown_at_max_batch": 2, "prefix_caching": True,
}  # fmt: skip
"""llm-d inference-sim's published latency profile of an 8B model on one H100."""
SIM_ENGINE: dict[str, Any] = {**H100_8B, "max_model_len": 4096, "max_num_seqs": 64,
                              "block_size": 16}
UNBOUNDED_KV_TOKENS = 10_000_000
FLEET_KV_SHARE = 1.5
"""Default KV capacity of the whole fleet as a share of the working set: each of N engines
holds 1.5/N of it (4 engines: 37.5 %), so the fleet holds it all only when every
conversation stays on one engine."""
REAL_TOKEN_MARGIN = 1.25
"""Real token counts over the simulator's (SmolLM2's chat template adds a token or two per
message; a few words may split): sizes derived from the workload get this much slack."""
REAL_MAX_NUM_SEQS = 16

Measured = tuple[Row, RunResult]


def multi_turn(scenario: Scenario) -> MultiTurnWorkload:
    """The scenario's multi-turn workload (ValueError for any other kind)."""
    spec = scenario.workload
    if isinstance(spec, LoraMixWorkload):
        spec = spec.workload
    if not isinstance(spec, MultiTurnWorkload):
        raise ValueError(f"the routing benchmark needs a multi_turn workload, not {spec.kind}")
    return spec


def gateway_settings(engine_urls: Sequence[str], strategy: str) -> dict[str, Any]:
    """A gateway config in front of these engines, routing with ``strategy``."""
    return {
        "default_engine": False, "access_log": False, "log_level": "warning",
        "health_interval_s": 0.5,
        "engines": [{"name": f"engine-{i}", "url": url} for i, url in enumerate(engine_urls)],
        "routing": {"default": {"strategy": strategy}},
    }  # fmt: skip


async def measure(name: str, url: str, engines: Sequence[str], scenario: Scenario,
                  progress: bool) -> Measured:
    """Run the scenario against ``url`` and read the ``engines``' prefix-cache counters."""
    result = await run(name, url, scenario, scrape_urls=engines, scrape_interval_s=1.0,
                       progress=progress)
    row = make_row(name, len(engines), summarize(result), fleet_hit_rate(result, engines))
    print(f"  {name:18s} TTFT p50 {row.ttft_p50_ms:8.1f} ms  hit rate "
          f"{'-' if row.hit_rate is None else f'{row.hit_rate:.1%}'}  failed {row.failed}",
          flush=True)
    return row, result


async def simulated(args: argparse.Namespace, scenario: Scenario, kv_tokens: int,
                    logs: Path) -> list[Measured]:
    """The baseline and every strategy, each on a fresh simulator fleet."""
    fields = {**SIM_ENGINE, "model": multi_turn(scenario).model}
    runs: list[Measured] = []
    if args.baseline:
        unbounded = {**fields, "kv_capacity_tokens": UNBOUNDED_KV_TOKENS}
        async with sim_fleet(1, unbounded, log_dir=logs) as single:
            runs.append(await measure(BASELINE, single.urls[0], single.urls, scenario,
                                      args.progress))
    for strategy in args.strategies:
        bounded = {**fields, "kv_capacity_tokens": kv_tokens}
        async with (sim_fleet(args.engines, bounded, log_dir=logs) as fleet,
                    gateway_process(gateway_settings(fleet.urls, strategy), log_dir=logs,
                                    name=f"gateway-{strategy}") as gateway):
            runs.append(await measure(strategy, gateway.url, fleet.urls, scenario,
                                      args.progress))
    return runs


async def real(args: argparse.Namespace, scenario: Scenario, kv_tokens: int,
               logs: Path) -> list[Measured]:
    """The same on real vLLM CPU engines, started once; caches reset before every run."""
    ws = working_set(multi_turn(scenario))
    max_model_len = round_up(longest_request(ws, scenario) * REAL_TOKEN_MARGIN, 256)
    engines = real_launches(
        args.engines, max(kv_tokens, max_model_len), max_model_len=max_model_len,
        max_num_seqs=REAL_MAX_NUM_SEQS, log_dir=logs,
        baseline_kv_tokens=max(4 * ws.total_tokens, max_model_len) if args.baseline else None)
    runs: list[Measured] = []
    print(f"starting {len(engines.launches)} vLLM engines one after the other (max_model_len "
          f"{max_model_len}; about 2 minutes each on 2 cores)", flush=True)
    async with engine_fleet(engines.launches, ready_timeout_s=600, one_at_a_time=True) as fleet:
        fleet_urls, baseline_urls = fleet.urls[: args.engines], fleet.urls[args.engines :]
        await warm_up(fleet.urls, engines.model)
        if baseline_urls:
            await reset_prefix_caches(baseline_urls)
            runs.append(await measure(BASELINE, baseline_urls[0], baseline_urls, scenario,
                                      args.progress))
        for strategy in args.strategies:
            await reset_prefix_caches(fleet_urls)
            async with gateway_process(gateway_settings(fleet_urls, strategy), log_dir=logs,
                                       name=f"gateway-{strategy}") as gateway:
                runs.append(await measure(strategy, gateway.url, fleet_urls, scenario,
                                          args.progress))
    return runs


def kv_capacity(args: argparse.Namespace, ws: WorkingSet, scenario: Scenario) -> int:
    """``--kv-capacity-tokens``, else ``--kv-share`` of the working set in whole blocks (at
    least one longest request) plus ``running_reserve``."""
    if args.kv_capacity_tokens:
        return int(args.kv_capacity_tokens)
    kv = round_up(max(ws.total_tokens * args.kv_share, longest_request(ws, scenario)), 32)
    return kv + running_reserve(args, ws, scenario)


def running_reserve(args: argparse.Namespace, ws: WorkingSet, scenario: Scenario) -> int:
    """KV tokens a real engine needs for its share of the scenario's concurrent requests
    (vLLM keeps running requests and cached prefixes in one pool; the simulator's prefix
    cache is sized apart from its running requests, so it needs none)."""
    if not args.real or args.kv_capacity_tokens:
        return 0
    concurrency = int(getattr(scenario.arrival, "concurrency", args.engines))
    per_engine = -(-concurrency // args.engines)
    return round_up(per_engine * longest_request(ws, scenario) * REAL_TOKEN_MARGIN, 32)


def longest_request(ws: WorkingSet, scenario: Scenario) -> int:
    """Prompt and output tokens of a conversation's last turn."""
    return ws.system_tokens + ws.conversation_tokens + multi_turn(scenario).output_len


def sizing(ws: WorkingSet, kv_tokens: int, reserve: int, engines: int) -> str:
    """One line: the working set and how much of it the engines' caches hold."""
    cache = kv_tokens - reserve
    running = f" ({reserve:,} of them for running requests)" if reserve else ""
    return (f"working set: {ws.total_tokens:,} tokens (system {ws.system_tokens:,} + "
            f"{ws.conversations} conversations x {ws.conversation_tokens:,}); KV per engine: "
            f"{kv_tokens:,} tokens{running}, caching {cache / ws.total_tokens:.1%} of the "
            f"working set; {engines} engines: {engines * cache / ws.total_tokens:.1%}")


def write_outputs(out: Path, runs: list[Measured], context: dict[str, Any]) -> str:
    """``result.json``, ``summary.md``, ``routing.png`` and the harness's plots in ``out``."""
    rows = [row for row, _ in runs]
    checks = check_targets(rows)
    table = markdown(rows, checks)
    docs = []
    for row, result in runs:
        doc = run_document(result, summarize(result), include_records=True)
        docs.append({**doc, "routing": row.as_dict()})
    bench = {**context, "rows": [row.as_dict() for row in rows],
             "targets": [asdict(check) for check in checks]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(
        json.dumps({"schema": SCHEMA, "routing_bench": bench, "runs": docs}, indent=1) + "\n")
    (out / "summary.md").write_text(f"{table}\n### Harness summary\n\n{harness_markdown(docs)}")
    write_plot(runs, out / "routing.png")
    write_plots([result for _, result in runs], out)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--real", action="store_true",
                        help="2 real vLLM CPU engines instead of simulators (small run)")
    parser.add_argument("--scenario", type=Path, help="multi_turn scenario YAML (default: "
                        "scenarios/routing_multiturn.yaml, or routing_real.yaml with --real)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated, run in this order")
    parser.add_argument("--engines", type=int, help="fleet size (default 4, or 2 with --real)")
    parser.add_argument("--kv-share", type=float, help="KV capacity per engine as a share "
                        f"of the working set (default {FLEET_KV_SHARE:g} / engines)")
    parser.add_argument("--kv-capacity-tokens", type=int, help="KV capacity per engine "
                        "(overrides --kv-share)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the single unbounded engine")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--out", type=Path, help="output directory (default results/routing"
                        " or results/routing_real)")
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies: {sorted(unknown)}")
    args.engines = args.engines or (2 if args.real else 4)
    args.kv_share = args.kv_share or FLEET_KV_SHARE / args.engines
    default_name = "routing_real" if args.real else "routing_multiturn"
    args.scenario = args.scenario or SCENARIOS / f"{default_name}.yaml"
    args.out = args.out or Path("results") / ("routing_real" if args.real else "routing")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scenario = Scenario.from_yaml(args.scenario)
    ws = working_set(multi_turn(scenario))
    kv_tokens = kv_capacity(args, ws, scenario)
    reserve = running_reserve(args, ws, scenario)
    print(sizing(ws, kv_tokens, reserve, args.engines), flush=True)
    logs = args.out / "logs"
    runner = real if args.real else simulated
    runs = asyncio.run(runner(args, scenario, kv_tokens, logs))
    context = {
        "mode": "real" if args.real else "simulator", "engines": args.engines,
        "engine": None if args.real else SIM_ENGINE, "scenario": scenario.model_dump(mode="json"),
        "working_set": {**asdict(ws), "total_tokens": ws.total_tokens},
        "kv_capacity_tokens_per_engine": kv_tokens, "kv_running_reserve_tokens": reserve,
        "cpus": os.cpu_count(),
    }
    print(write_outputs(args.out, runs, context))
    print(f"wrote {args.out}/result.json, summary.md, routing.png")


if __name__ == "__main__":
    main()
