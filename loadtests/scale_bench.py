"""1,000 concurrent streams through ONE gateway process: errors, memory and CPU per token.

Simulator engines (fast, so the run is bounded by the machine, not by them) sit behind one
``python -m gateway serve``; the harness keeps ``scenarios/scale_1000.yaml``'s concurrency
in flight through it. Reported: failures (zero expected), the gateway's RSS before, after
and at its peak (sampled every 0.25 s), its CPU time (utime + stime from ``/proc``) over the
run per 1,000 output tokens, throughput, TTFT p50/p99, the most streams the gateway had
open at once (its ``sluice_requests_in_flight`` gauge, scraped every 0.5 s), and the CPU
time of the load generator (this process) and the engines, which share the machine.

    python -m loadtests.scale_bench --out results/scale
    python -m loadtests.scale_bench --gateway-root /tmp/sluice-e28a60d --out results/scale-old
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.fleet import EngineFleet, gateway_process, sim_fleet
from loadtests.metrics import Summary, series_by_name, summarize
from loadtests.plots import write_plots
from loadtests.proc import PeakRss, ProcStats, raise_fd_limit, read_stats, self_cpu_s
from loadtests.records import RunResult
from loadtests.report import SCHEMA, run_document
from loadtests.report import markdown as harness_markdown
from loadtests.runner import Scenario, run

SCENARIO = Path(__file__).parent / "scenarios" / "scale_1000.yaml"
SIM_ENGINE: dict[str, Any] = {
    "model": "sim-model", "max_num_seqs": 1024, "prefill_base_ms": 5, "decode_step_ms": 20,
    "max_model_len": 2048, "kv_capacity_tokens": 1_000_000,
}  # fmt: skip
IN_FLIGHT = "sluice_requests_in_flight"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Costs:
    """What the run cost, beside its latency summary."""

    gateway_rss_before_mib: float
    gateway_rss_after_mib: float
    gateway_rss_peak_mib: float
    gateway_cpu_s: float
    gateway_cpu_ms_per_1k_tokens: float
    load_generator_cpu_s: float
    engines_cpu_s: float
    peak_gateway_in_flight: float | None
    output_tokens: int


def cpu_ms_per_1k_tokens(cpu_s: float, tokens: int) -> float:
    """CPU milliseconds per 1,000 tokens (0 when no token was produced)."""
    return cpu_s * 1_000_000 / tokens if tokens else 0.0


def peak_value(result: RunResult, source: str, name: str) -> float | None:
    """The largest scraped value of ``name`` from ``source``; None if never scraped."""
    points = series_by_name(result).get((source, name), [])
    return max((value for _, value in points), default=None)


def engines_cpu_s(fleet: EngineFleet) -> float:
    """CPU time of every running engine so far."""
    pids = [pid for i in range(len(fleet)) if (pid := fleet.pid(i)) is not None]
    return sum(read_stats(pid).cpu_s for pid in pids)


def costs(before: ProcStats, after: ProcStats, peak_bytes: int, load_cpu_s: float,
          engine_cpu_s: float, peak_in_flight: float | None, summary: Summary) -> Costs:
    """The ``Costs`` of a run from its before/after measurements."""
    gateway_cpu = after.cpu_s - before.cpu_s
    tokens = summary.total_output_tokens
    return Costs(
        gateway_rss_before_mib=before.rss_bytes / MIB, gateway_rss_after_mib=after.rss_bytes / MIB,
        gateway_rss_peak_mib=max(peak_bytes, after.rss_bytes) / MIB,
        gateway_cpu_s=gateway_cpu,
        gateway_cpu_ms_per_1k_tokens=cpu_ms_per_1k_tokens(gateway_cpu, tokens),
        load_generator_cpu_s=load_cpu_s, engines_cpu_s=engine_cpu_s,
        peak_gateway_in_flight=peak_in_flight, output_tokens=tokens,
    )  # fmt: skip


def markdown(summary: Summary, c: Costs, engines: int) -> str:
    """One table of the run."""
    verdict = "met" if summary.failed == 0 else "**NOT met**"
    in_flight = "-" if c.peak_gateway_in_flight is None else f"{c.peak_gateway_in_flight:,.0f}"
    rows = [
        ("requests OK / failed", f"{summary.completed:,} / {summary.failed:,} "
                                 f"(zero errors: {verdict})"),
        ("peak streams open in the gateway", in_flight),
        ("engines", f"{engines} simulators"),
        ("output tokens", f"{c.output_tokens:,}"),
        ("duration", f"{summary.duration_s:.1f} s"),
        ("output throughput", f"{summary.output_throughput:,.0f} tok/s"),
        ("TTFT p50 / p99", f"{summary.ttft_ms.percentiles['p50']:,.0f} / "
                           f"{summary.ttft_ms.percentiles['p99']:,.0f} ms"),
        ("TPOT p50 / p99", f"{summary.tpot_ms.percentiles['p50']:,.1f} / "
                           f"{summary.tpot_ms.percentiles['p99']:,.1f} ms"),
        ("gateway RSS before / peak / after", f"{c.gateway_rss_before_mib:.0f} / "
         f"{c.gateway_rss_peak_mib:.0f} / {c.gateway_rss_after_mib:.0f} MiB"),
        ("gateway CPU", f"{c.gateway_cpu_s:.1f} s"),
        ("gateway CPU per 1,000 output tokens", f"{c.gateway_cpu_ms_per_1k_tokens:.1f} ms"),
        ("load generator CPU (same machine)", f"{c.load_generator_cpu_s:.1f} s"),
        ("engines CPU (same machine)", f"{c.engines_cpu_s:.1f} s"),
    ]
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join([*lines, ""])


async def bench(args: argparse.Namespace) -> tuple[RunResult, Costs]:
    scenario = Scenario.from_yaml(args.scenario)
    logs = args.out / "logs"
    async with sim_fleet(args.engines, SIM_ENGINE, log_dir=logs) as fleet:
        settings = {
            "default_engine": False, "access_log": False, "log_level": "warning",
            "engines": [{"name": f"sim-{i}", "url": url} for i, url in enumerate(fleet.urls)],
        }  # fmt: skip
        async with gateway_process(settings, log_dir=logs, root=args.gateway_root) as gateway:
            before, engines_before = gateway.stats(), engines_cpu_s(fleet)
            load_before = self_cpu_s()
            async with PeakRss(gateway.pid) as peak:
                result = await run("gateway", gateway.url, scenario, scrape_urls=[gateway.url],
                                   progress=args.progress)
            after = gateway.stats()
            load_cpu, engine_cpu = self_cpu_s() - load_before, engines_cpu_s(fleet) - engines_before
    peak_in_flight = peak_value(result, gateway.url, IN_FLIGHT)
    return result, costs(before, after, peak.peak_bytes, load_cpu, engine_cpu, peak_in_flight,
                         summarize(result))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenario", type=Path, default=SCENARIO)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("results/scale"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--gateway-root", type=Path, default=None,
                        help="run the gateway of the checkout at this path (e.g. a git "
                             "worktree of an earlier commit) against the same harness and "
                             "engines")
    args = parser.parse_args(argv)
    if args.gateway_root is not None:
        args.gateway_root = args.gateway_root.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"open-file limit raised to {raise_fd_limit()}", flush=True)
    result, measured = asyncio.run(bench(args))
    summary = summarize(result)
    doc = {**run_document(result, summary, include_records=True),
           "scale": {**asdict(measured), "engines": args.engines, "engine": SIM_ENGINE,
                     "cpus": os.cpu_count()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(summary, measured, args.engines)
    (args.out / "summary.md").write_text(f"{table}\n### Harness summary\n\n"
                                         f"{harness_markdown(doc)}")
    write_plots(result, args.out)
    print(table)
    print(f"wrote {args.out}/result.json, summary.md and plots ({SCHEMA})")
    if summary.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
