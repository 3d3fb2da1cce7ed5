"""LoRA adapter placement compared: ``lora_affinity`` beside least-loaded, least-loaded
alone, and random placement, on simulator engines that hold few adapters at a time.

    python -m loadtests.lora_bench --out results/lora --plot docs/bench/lora_placement.png

Each policy gets a fresh fleet of 4 simulator engines (``max_loras`` 2, loading an adapter
takes ``LORA_LOAD_MS``, the llm-d H100 latency profile of ``routing_bench``) and a fresh
gateway with 16 adapters of the engines' base model registered. Requests name an adapter
drawn with Zipf popularity (s 1.1, seeded: every policy gets the same requests), arrive
as a Poisson process, and stream their answers. A warm-up run first loads the popular
adapters; the counters are read before and after the measured run: the gateway's
(``sluice_adapter_loads_total``, ``sluice_adapter_unloads_total``,
``sluice_adapter_load_seconds``) and every engine's own (``GET /sim/lora``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.fleet import gateway_process, sim_fleet
from loadtests.lora_report import (
    Counts,
    Row,
    adapter_names,
    counts,
    make_row,
    markdown,
    problems,
    write_plot,
    zipf_weights,
)
from loadtests.metrics import summarize
from loadtests.records import RunResult
from loadtests.report import SCHEMA, run_document
from loadtests.routing_bench import H100_8B
from loadtests.runner import Scenario, run

LORA_LOAD_MS = 17.0
"""Median of 5 loads of a rank-8 adapter by the real vLLM CPU engine (``python -m
loadtests.lora_load_time``); where and when it was measured: docs/explanation/benchmarks.md,
"LoRA adapter placement"."""
ENGINES = 4
MAX_LORAS = 2
ADAPTERS = 16
ZIPF_S = 1.1
BASE_MODEL = "sim-model"
SIM_ENGINE: dict[str, Any] = {**H100_8B, "model": BASE_MODEL, "max_model_len": 4096,
                              "max_num_seqs": 64, "max_loras": MAX_LORAS}
POLICIES = ("lora_affinity", "least_loaded", "random")
RATE = 12.0
REQUESTS = 2000
WARMUP_REQUESTS = 200
INPUT_LEN = 256
OUTPUT_LEN = 32
SEED = 0
CONTROL_TIMEOUT_S = 10.0


def scenario(requests: int, rate: float, seed: int) -> Scenario:
    """Random prompts, each naming one of the adapters by Zipf popularity."""
    weights = zipf_weights(ADAPTERS, ZIPF_S)
    return Scenario.model_validate({
        "name": "lora-zipf",
        "workload": {
            "kind": "lora_mix",
            "models": dict(zip(adapter_names(ADAPTERS), weights, strict=True)),
            "workload": {"kind": "random", "input_len": INPUT_LEN, "output_len": OUTPUT_LEN},
        },
        "arrival": {"kind": "poisson", "rate": rate},
        "num_requests": requests, "request_timeout_s": 120, "seed": seed,
    })  # fmt: skip


def gateway_settings(engine_urls: Sequence[str], policy: str, seed: int) -> dict[str, Any]:
    """A gateway in front of these engines, the adapters registered, placing with
    ``policy``: ``lora_affinity`` (the defaults: weight 2 beside the least_loaded
    strategy), ``least_loaded`` (the strategy, lora_affinity off) or ``random`` (a profile
    of the seeded ``random`` scorer alone, lora_affinity off)."""
    routing: dict[str, Any] = {"default": {"strategy": "least_loaded"}}
    lora: dict[str, Any] = {}
    if policy != "lora_affinity":
        lora["affinity_weight"] = 0
    if policy == "random":
        routing = {"profiles": {"random": {"scorers": [
                       {"type": "random", "params": {"seed": seed}}]}},
                   "default": {"profile": "random"}}
    return {
        "default_engine": False, "access_log": False, "log_level": "warning",
        "health_interval_s": 0.5,
        "engines": [{"name": f"engine-{i}", "url": url, "max_loras": MAX_LORAS}
                    for i, url in enumerate(engine_urls)],
        "adapters": [{"name": name, "base": BASE_MODEL, "path": f"/adapters/{name}"}
                     for name in adapter_names(ADAPTERS)],
        "lora": lora, "routing": routing,
    }  # fmt: skip


async def read_counts(gateway: str, engines: Sequence[str]) -> tuple[Counts, list[Any]]:
    """The gateway's and the engines' adapter counters now (and each engine's answer)."""
    timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(gateway + "/metrics") as response:
            response.raise_for_status()
            page = await response.text()
        sims = []
        for engine in engines:
            async with http.get(engine + "/sim/lora") as response:
                response.raise_for_status()
                sims.append(await response.json())
    return counts(page, sims), sims


async def measure(policy: str, args: argparse.Namespace,
                  logs: Path) -> tuple[Row, RunResult, list[Any]]:
    """One policy on a fresh fleet and gateway: warm-up, then the measured run."""
    fields = {**SIM_ENGINE, "lora_load_ms": args.lora_load_ms}
    async with (sim_fleet(ENGINES, fields, log_dir=logs / policy) as fleet,
                gateway_process(gateway_settings(fleet.urls, policy, args.seed),
                                log_dir=logs, name=f"gateway-{policy}") as gateway):
        if args.warmup:
            warm = scenario(args.warmup, args.rate, args.seed + 1)
            await run(f"{policy}-warmup", gateway.url, warm, progress=False)
        before, _ = await read_counts(gateway.url, fleet.urls)
        result = await run(policy, gateway.url, scenario(args.requests, args.rate, args.seed),
                           scrape_urls=[gateway.url], scrape_interval_s=1.0,
                           progress=args.progress)
        after, sims = await read_counts(gateway.url, fleet.urls)
    row = make_row(policy, summarize(result), after - before, after)
    print(f"  {policy:14s} loads/1k {row.loads_per_1k:6.1f}  unloads {row.unloads:5d}  "
          f"TTFT p50 {row.ttft_p50_ms:7.1f} ms  p99 {row.ttft_p99_ms:8.1f} ms  "
          f"failed {row.failed}", flush=True)
    return row, result, sims


def write_outputs(args: argparse.Namespace, runs: list[tuple[Row, RunResult, list[Any]]],
                  found: list[str]) -> str:
    """``result.json``, ``summary.md`` and ``lora_placement.png`` in ``args.out`` (and the
    plot at ``args.plot`` too when given)."""
    rows = [row for row, _, _ in runs]
    table = markdown(rows)
    bench = {
        "engines": ENGINES, "engine": {**SIM_ENGINE, "lora_load_ms": args.lora_load_ms},
        "adapters": ADAPTERS, "zipf_s": ZIPF_S, "rate": args.rate,
        "requests": args.requests, "warmup_requests": args.warmup,
        "input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "seed": args.seed,
        "cpus": os.cpu_count(), "problems": found,
        "rows": [row.as_dict() for row in rows],
        "engines_lora": {row.policy: sims for row, _, sims in runs},
    }  # fmt: skip
    docs = [{**run_document(result, summarize(result)), "lora": row.as_dict()}
            for row, result, _ in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(
        json.dumps({"schema": SCHEMA, "lora_bench": bench, "runs": docs}, indent=1) + "\n")
    (args.out / "summary.md").write_text(table)
    pairs = [(row, result) for row, result, _ in runs]
    write_plot(pairs, args.out / "lora_placement.png")
    if args.plot is not None:
        write_plot(pairs, args.plot)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated, run in this order")
    parser.add_argument("--rate", type=float, default=RATE, help="requests per second")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="per policy")
    parser.add_argument("--warmup", type=int, default=WARMUP_REQUESTS,
                        help="requests sent before the measured run, per policy")
    parser.add_argument("--lora-load-ms", type=float, default=LORA_LOAD_MS,
                        help="the engines' adapter load time (default: the one measured)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("results") / "lora")
    parser.add_argument("--plot", type=Path, help="also write the plot here")
    args = parser.parse_args(argv)
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = set(args.policies) - set(POLICIES)
    if unknown:
        parser.error(f"unknown policies: {sorted(unknown)}")
    return args


async def run_all(args: argparse.Namespace) -> list[tuple[Row, RunResult, list[Any]]]:
    return [await measure(policy, args, args.out / "logs") for policy in args.policies]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{ENGINES} engines x {MAX_LORAS} adapters, {ADAPTERS} adapters (Zipf s {ZIPF_S}), "
          f"load {args.lora_load_ms:g} ms, {args.requests} requests at {args.rate:g}/s "
          "per policy", flush=True)
    runs = asyncio.run(run_all(args))
    found = [problem for row, _, _ in runs for problem in problems(row)]
    print(write_outputs(args, runs, found))
    print(f"wrote {args.out}/result.json, summary.md, lora_placement.png")
    if found:
        sys.exit("\n".join(found))


if __name__ == "__main__":
    main()
