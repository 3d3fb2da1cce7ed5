"""The harness against `vllm bench serve`: same random workload, same real engine.

Starts the real stack (gateway + managed vLLM CPU engine), then runs, alternately for
``--rounds`` rounds, vLLM's own serving benchmark (from the engine's virtualenv) and the
harness, both straight at the engine. Reports each tool's median TTFT and output
throughput and their difference, and checks the harness's TTFT distribution against the
engine's own ``vllm:time_to_first_token_seconds`` histogram over the harness's runs.

    python -m loadtests.vllm_compare --out results/vllm_compare
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtests.metrics import summarize
from loadtests.runner import Scenario, run
from loadtests.scrape import histogram, read_page
from loadtests.stack import ENGINE_PYTHON, MODEL_DIR, real_stack

SCENARIO = Path(__file__).parent / "scenarios" / "real_random.yaml"
_VLLM_BENCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
               "from vllm.benchmarks.serve import add_cli_args, main; "
               "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
TTFT_BUCKETS = "vllm:time_to_first_token_seconds_bucket"


def vllm_bench(engine: str, scenario: Scenario, out_dir: Path, name: str) -> dict[str, Any]:
    """One `vllm bench serve` run with the scenario's workload; its saved JSON result."""
    workload = scenario.workload.model_dump()
    argv = [str(ENGINE_PYTHON), "-c", _VLLM_BENCH,
            "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", engine, "--model", workload["model"], "--tokenizer", str(MODEL_DIR),
            "--dataset-name", "random",
            "--random-input-len", str(workload["input_len"][0]),
            "--random-output-len", str(workload["output_len"][0]),
            "--num-prompts", str(scenario.num_requests),
            "--max-concurrency", str(scenario.arrival.model_dump()["concurrency"]),
            "--ignore-eos", "--seed", str(scenario.seed), "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads((out_dir / name).read_text())
    # The client shares the CPU with a CPU engine: what it burns, the engine lacks.
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def ttft_histogram(engine: str) -> dict[float, float]:
    """The engine's cumulative TTFT bucket counts by upper bound."""
    return histogram(read_page(engine), TTFT_BUCKETS)


def histogram_agreement(before: dict[float, float], after: dict[float, float],
                        ttfts_s: list[float]) -> list[dict[str, float]]:
    """Per bucket bound: the share of requests at or under it, by the engine and by us."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    rows = []
    for le in sorted(after):
        if le == float("inf"):
            continue
        engine_share = (after[le] - before.get(le, 0.0)) / total if total else 0.0
        ours = sum(1 for t in ttfts_s if t <= le) / len(ttfts_s) if ttfts_s else 0.0
        rows.append({"le_s": le, "engine": engine_share, "harness": ours})
    return rows


async def harness_round(engine: str, scenario: Scenario) -> tuple[dict[str, Any], list[float]]:
    cpu = time.process_time()
    result = await run("engine", engine, scenario, progress=False)
    summary = summarize(result).model_dump(mode="json")
    summary["client_cpu_s"] = time.process_time() - cpu
    ttfts = [r.ttft for r in result.records if r.ok and r.ttft is not None]
    return summary, ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/vllm_compare"))
    args = parser.parse_args()
    scenario = Scenario.model_validate(yaml.safe_load(SCENARIO.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    vllm_runs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    agreement: list[list[dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, real_stack(Path(tmp) / "stack.log") as stack:
        for index in range(args.rounds):
            order = ("vllm", "harness") if index % 2 == 0 else ("harness", "vllm")
            for tool in order:
                if tool == "vllm":
                    vllm_runs.append(vllm_bench(stack.engine, scenario, args.out,
                                                f"vllm_bench_{index}.json"))
                else:
                    before = ttft_histogram(stack.engine)
                    summary, ttfts = asyncio.run(harness_round(stack.engine, scenario))
                    agreement.append(histogram_agreement(before, ttft_histogram(stack.engine),
                                                         ttfts))
                    ours.append(summary)
                print(f"round {index} {tool} done", flush=True)
    report = build_report(vllm_runs, ours, agreement)
    (args.out / "compare.json").write_text(json.dumps(report, indent=2))
    (args.out / "compare.md").write_text(report["markdown"] + "\n")
    print(report["markdown"])


def build_report(vllm_runs: list[dict[str, Any]], ours: list[dict[str, Any]],
                 agreement: list[list[dict[str, float]]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    rows = {
        "median TTFT (ms)": (med([r["median_ttft_ms"] for r in vllm_runs]),
                             med([s["ttft_ms"]["median"] for s in ours])),
        "median TPOT (ms)": (med([r["median_tpot_ms"] for r in vllm_runs]),
                             med([s["tpot_ms"]["median"] for s in ours])),
        "median ITL (ms)": (med([r["median_itl_ms"] for r in vllm_runs]),
                            med([s["itl_ms"]["median"] for s in ours])),
        "output throughput (tok/s)": (med([r["output_throughput"] for r in vllm_runs]),
                                      med([s["output_throughput"] for s in ours])),
        "completed requests": (med([r["completed"] for r in vllm_runs]),
                               med([s["completed"] for s in ours])),
        "client CPU time (s)": (med([r["client_cpu_s"] for r in vllm_runs]),
                                med([s["client_cpu_s"] for s in ours])),
    }
    lines = ["| metric | vllm bench serve | sluice bench | difference |", "|---|---|---|---|"]
    for name, (theirs, mine) in rows.items():
        diff = 100 * (mine - theirs) / theirs if theirs else float("nan")
        lines.append(f"| {name} | {theirs:,.1f} | {mine:,.1f} | {diff:+.1f} % |")
    pooled = agreement[-1] if agreement else []
    lines += ["", "TTFT distribution, last harness round: share of requests with TTFT <= bound",
              "", "| bound (s) | engine histogram | harness |", "|---|---|---|"]
    lines += [f"| {row['le_s']:g} | {100 * row['engine']:.1f} % | {100 * row['harness']:.1f} % |"
              for row in pooled if 0 < row["engine"] < 1 or 0 < row["harness"] < 1]
    return {"rows": {k: {"vllm": v[0], "sluice": v[1]} for k, v in rows.items()},
            "vllm_runs": vllm_runs, "harness_runs": ours, "ttft_agreement": agreement,
            "markdown": "\n".join(lines)}


if __name__ == "__main__":
    main()
