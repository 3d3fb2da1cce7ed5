"""Worker scaling: relayed tokens/s through ``sluice serve`` with 1, 2, 3 ... workers.

A fleet of fast simulator engines (``--engines``, first token after 5 ms, one token
every 5 ms per stream) behind one gateway per worker count, all started at once; the
gateways are measured in turns (the order rotates every round), with a load that
saturates one worker: ``--concurrency`` streams of ``--tokens`` tokens at a time.
Medians of the rounds are reported. The load generator, the engines and the gateway
workers all share this machine's cores, so the ceiling is the machine, not the gateway.

    python -m loadtests.workers_bench --workers 1,2,3 --out results/workers_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

from loadtests.fleet import gateway_process, sim_fleet
from loadtests.metrics import summarize
from loadtests.runner import Scenario, run


def scenario(concurrency: int, tokens: int, requests: int) -> Scenario:
    return Scenario.model_validate({
        "name": f"workers-{concurrency}x{tokens}",
        "workload": {"kind": "random", "input_len": 16, "output_len": tokens,
                     "model": "sim-model"},
        "arrival": {"kind": "concurrency", "concurrency": concurrency},
        "num_requests": requests, "request_timeout_s": 300, "warmup_requests": 8, "seed": 0})


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    load = scenario(args.concurrency, args.tokens, args.requests)
    sim = {"model": "sim-model", "prefill_base_ms": 5.0, "decode_step_ms": 5.0,
           "max_num_seqs": 4096}
    rounds: list[dict[str, Any]] = []
    async with sim_fleet(args.engines, sim, log_dir=args.logs) as fleet, \
            contextlib.AsyncExitStack() as stack:
        gateways = []
        for count in args.workers:
            settings = {"engines": [{"name": f"sim-{i}", "url": url}
                                    for i, url in enumerate(fleet.urls)],
                        "default_engine": False, "access_log": False, "workers": count}
            gateway = await stack.enter_async_context(
                gateway_process(settings, log_dir=args.logs, name=f"gateway-{count}w"))
            gateways.append((count, gateway.url))
        for index in range(args.rounds):
            shift = index % len(gateways)
            for count, url in gateways[shift:] + gateways[:shift]:
                summary = summarize(await run(f"{count} workers", url, load, progress=False))
                row = {"workers": count, "tok_per_s": summary.output_throughput,
                       "ttft_p50_ms": summary.ttft_ms.percentiles["p50"],
                       "errors": summary.failed}
                rounds.append(row)
                print(f"  {count} workers {row['tok_per_s']:9.0f} tok/s "
                      f"ttft p50 {row['ttft_p50_ms']:7.1f} ms errors {row['errors']}",
                      flush=True)
    summary_rows = []
    for count in args.workers:
        mine = [r for r in rounds if r["workers"] == count]
        summary_rows.append({
            "workers": count,
            "tok_s": statistics.median(r["tok_per_s"] for r in mine),
            "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in mine),
            "errors": sum(r["errors"] for r in mine)})
    base = summary_rows[0]["tok_s"]
    for row in summary_rows:
        row["vs_first"] = row["tok_s"] / base
    return {"config": {"engines": args.engines, "concurrency": args.concurrency,
                       "tokens": args.tokens, "requests": args.requests,
                       "rounds": args.rounds, "cpus": os.cpu_count()},
            "rounds": rounds, "summary": summary_rows}


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| workers | tok/s | vs first | TTFT p50 | errors |", "|---|---|---|---|---|"]
    for row in summary:
        lines.append(f"| {row['workers']} | {row['tok_s']:,.0f} | {row['vs_first']:.2f}x | "
                     f"{row['ttft_p50_ms']:.1f} ms | {row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,3",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/workers_bench.json"))
    args = parser.parse_args()
    args.logs = args.out.parent / "workers_bench_logs"
    args.logs.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(bench(args))
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result["summary"]))


if __name__ == "__main__":
    main()
