"""Quality and cost of the default model's quantized checkpoints, each served by a real
vLLM CPU engine, one at a time (``make bench-quant``).

For fp32, W8A8 and W4A16 (``make model-quantized``) it records the size on disk, the
engine's memory (PSS of its process group: API server, engine core and worker, with the
KV cache of ``VLLM_CPU_KVCACHE_SPACE=2`` GiB), output tokens/s of 64-token greedy
completions at 1 and 8 concurrent streams, greedy agreement with fp32 on
``engines/data/prompts.jsonl`` (64-token chat answers: the share identical, and the
token where each first differs) and perplexity on ``engines/data/heldout.txt`` (the
engine's own ``prompt_logprobs`` over 512-token windows). A checkpoint this CPU cannot
serve (W4A16 without ``avx512f``) is recorded as refused, with the missing feature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Literal

import aiohttp

from engines.checkpoint import (
    UnservableCheckpoint,
    check_servable,
    cpu_flags,
    read_cpuinfo,
    read_quantization,
)
from engines.spec import EngineSpec
from loadtests.fleet import vllm_launch
from loadtests.launch import ROOT, LaunchError, free_port, launched
from loadtests.stack import CACHE, ENGINE_PYTHON, MODEL_DIR, SERVED_NAME

DATA = ROOT / "engines" / "data"
VARIANTS = {"fp32": MODEL_DIR,
            "w8a8": CACHE / "models" / "SmolLM2-135M-Instruct-w8a8",
            "w4a16": CACHE / "models" / "SmolLM2-135M-Instruct-w4a16"}
MAX_TOKENS = 64
WINDOW = 512
STREAMS = (1, 8)
ROUNDS = 3
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=600)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def disk_bytes(directory: Path) -> int:
    """Bytes of the files in ``directory`` (weights, tokenizer, config)."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def group_pss_bytes(pgid: int) -> int:
    """Proportional set size of every process in group ``pgid`` (shared pages split
    between the processes that share them, so torch's libraries count once)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ProcessLookupError):
            continue
    return total


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {await response.text()}")
        answer: dict[str, Any] = await response.json()
        return answer


async def throughput(http: aiohttp.ClientSession, url: str, streams: int) -> float:
    """Output tokens/s of ``streams`` concurrent 64-token greedy completions, ``ROUNDS``
    times over (each stream's prompt its own, so the prefix cache does not help)."""
    async def one(index: int) -> int:
        body = {"model": SERVED_NAME, "prompt": f"Story {index}: once upon a time,",
                "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
        return int((await post(http, url + "/v1/completions", body))["usage"]
                   ["completion_tokens"])
    began = time.monotonic()
    tokens = 0
    for round_ in range(ROUNDS):
        done = await asyncio.gather(*(one(round_ * streams + i) for i in range(streams)))
        tokens += sum(done)
    return tokens / (time.monotonic() - began)


async def greedy_answers(http: aiohttp.ClientSession, url: str) -> list[list[str]]:
    """Each shipped prompt's 64-token greedy chat answer, as its tokens."""
    prompts = [json.loads(line)["prompt"]
               for line in (DATA / "prompts.jsonl").read_text().splitlines() if line]
    answers = []
    for prompt in prompts:
        body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": True}
        choice = (await post(http, url + "/v1/chat/completions", body))["choices"][0]
        answers.append([entry["token"] for entry in choice["logprobs"]["content"]])
    return answers


async def perplexity(http: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    """exp of the mean negative log-likelihood of the held-out text's tokens, each
    ``WINDOW``-token window scored on its own (its first token has no context)."""
    text = (DATA / "heldout.txt").read_text()
    tokens = (await post(http, url + "/tokenize", {"model": SERVED_NAME, "prompt": text,
                                                   "add_special_tokens": False}))["tokens"]
    total, count = 0.0, 0
    for start in range(0, len(tokens), WINDOW):
        window = tokens[start:start + WINDOW]
        body = {"model": SERVED_NAME, "prompt": window, "max_tokens": 1, "temperature": 0,
                "prompt_logprobs": 0}
        scored = (await post(http, url + "/v1/completions", body))["choices"][0]
        for token, entry in zip(window[1:], scored["prompt_logprobs"][1:], strict=True):
            total -= entry[str(token)]["logprob"]
            count += 1
    return math.exp(total / count), count


def agreement(answers: list[list[str]], reference: list[list[str]]) -> dict[str, Any]:
    """The share of answers identical to the reference's, and where the others part."""
    diverged = [next((i for i, (a, b) in enumerate(zip(answer, ref, strict=False)) if a != b),
                     min(len(answer), len(ref)))
                for answer, ref in zip(answers, reference, strict=True) if answer != ref]
    return {"identical": len(answers) - len(diverged), "prompts": len(answers),
            "first_divergence_tokens": sorted(diverged),
            "median_first_divergence": sorted(diverged)[len(diverged) // 2] if diverged
            else None}


async def measure(name: str, model: Path, log_dir: Path) -> dict[str, Any]:
    """One variant: serve it, measure it, stop it."""
    record: dict[str, Any] = {"variant": name, "model": str(model),
                              "disk_bytes": disk_bytes(model)}
    quantization = read_quantization(model)
    # vllm-cpu's int4 kernel has no float32 path: W4A16 runs with bfloat16 activations.
    dtype: Literal["bfloat16", "float32"] = (
        "bfloat16" if quantization and quantization.cpu_dtypes else "float32")
    try:
        check_servable(model, read_cpuinfo(), dtype)
    except UnservableCheckpoint as refused:
        return {**record, "refused": str(refused)}
    record["scheme"] = quantization.scheme if quantization else "fp32"
    record["dtype"] = dtype
    spec = EngineSpec(model=model, served_name=SERVED_NAME, python=ENGINE_PYTHON,
                      port=free_port(), enable_lora=False, dtype=dtype)
    began = time.monotonic()
    async with launched(vllm_launch(spec, log_dir / f"vllm-{name}.log"),
                        ready_timeout_s=READY_TIMEOUT_S) as process, \
            aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        record["ready_s"] = round(time.monotonic() - began, 1)
        answers = await greedy_answers(http, spec.url)  # also warms the engine up
        record["answers"] = answers
        record["perplexity"], record["scored_tokens"] = await perplexity(http, spec.url)
        for streams in STREAMS:
            record[f"tokens_per_s_{streams}"] = round(
                await throughput(http, spec.url, streams), 1)
        record["engine_pss_bytes"] = group_pss_bytes(process.pid)
        record["load_average_after"] = os.getloadavg()
    return record


def host() -> dict[str, Any]:
    flags = cpu_flags(read_cpuinfo()) or frozenset()
    model = next((line.split(":", 1)[1].strip() for line in read_cpuinfo().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"cpu": model, "cores": os.cpu_count(),
            "flags": [flag for flag in SHOWN_FLAGS if flag in flags]}


def table(results: dict[str, Any]) -> str:
    """The markdown table of ``results`` (what ``docs/explanation/quantization.md``
    shows)."""
    rows = ["| | activations | size on disk | engine memory (PSS) | tokens/s, 1 stream | "
            "tokens/s, 8 streams | greedy answers = fp32 | first differing token (median) | "
            "perplexity |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for run in results["variants"]:
        size = f"{run['disk_bytes'] / 1e6:.0f} MB"
        if "refused" in run or "failed" in run:
            why = (f"not served here: {run['refused'].split('and this CPU ')[-1].split(' (')[0]}"
                   if "refused" in run else "the engine failed to start (see the JSON)")
            rows.append(f"| {run['variant']} | | {size} | {why} | | | | | |")
            continue
        same = run["agreement"]
        median = same["median_first_divergence"]
        rows.append(
            f"| {run['variant']} | {run['dtype']} | {size} | "
            f"{run['engine_pss_bytes'] / 2**30:.2f} GiB | "
            f"{run['tokens_per_s_1']:.1f} | {run['tokens_per_s_8']:.1f} | "
            f"{same['identical']} of {same['prompts']} | "
            f"{'-' if median is None else median} | {run['perplexity']:.2f} |")
    return "\n".join(rows) + "\n"


async def run(variants: list[str], out: Path) -> dict[str, Any]:
    log_dir = out.parent / "quantization-logs"
    results: dict[str, Any] = {"host": host(), "max_tokens": MAX_TOKENS, "rounds": ROUNDS,
                               "variants": []}
    for name in variants:
        before = os.getloadavg()
        print(f"==> {name}: {VARIANTS[name]} (load average {before})", flush=True)
        try:
            record = {**await measure(name, VARIANTS[name], log_dir),
                      "load_average_before": before}
        except LaunchError as failed:
            record = {"variant": name, "model": str(VARIANTS[name]),
                      "disk_bytes": disk_bytes(VARIANTS[name]), "failed": str(failed)}
        print({k: v for k, v in record.items() if k != "answers"}, flush=True)
        results["variants"].append(record)
        save(out, results)  # what is done so far
    reference = next((r["answers"] for r in results["variants"]
                      if r["variant"] == "fp32" and "answers" in r), None)
    for record in results["variants"]:
        if reference is not None and "answers" in record:
            record["agreement"] = agreement(record["answers"], reference)
    return results


def save(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("results/quantization.json"))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, fp32 first (the reference for agreement)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    missing = [VARIANTS[v] for v in variants if not (VARIANTS[v] / "config.json").is_file()]
    if missing or not ENGINE_PYTHON.exists():
        raise SystemExit(f"needs {ENGINE_PYTHON} (make engine) and {missing} "
                         "(make model model-quantized)")
    results = asyncio.run(run(variants, args.out))
    save(args.out, results)
    markdown = table(results)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
