"""Gateway CPU per request: short streams through one gateway process, CPU from ``/proc``.

One simulator engine answers at once (prefill 1 ms, one token per 1 ms step); each
request is a streamed chat completion of ``max_tokens`` 2 (two tokens: what a request
costs beyond its tokens), ``--concurrency`` at a time, read to ``[DONE]`` by a plain
aiohttp client. Per round and target: the gateway's CPU time (utime + stime of its
process, ``/proc/PID/stat``) over ``--requests`` requests divided by their number, after
``--warmup`` requests that are not counted. With ``--compare NAME=PATH`` the gateway of
another checkout (e.g. a ``git worktree`` of an earlier commit) is measured in the same
run, the targets taking turns each round, so both see the same machine.

    python -m loadtests.cpu_bench --rounds 3 --out results/cpu_bench.json \\
        --compare before=/tmp/sluice-before
    python -m loadtests.cpu_bench --profile results/cpu.speedscope.json

All traffic stays on 127.0.0.1; every request is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.fleet import gateway_launch, sim_launch
from loadtests.launch import Launch, launched
from loadtests.proc import CLOCK_TICKS, read_stats

BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2, "stream": True}


async def load(url: str, requests: int, concurrency: int) -> tuple[int, float]:
    """Send ``requests`` streams, ``concurrency`` at a time; (errors, seconds)."""
    errors = 0
    todo = iter(range(requests))
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        async def worker() -> None:
            nonlocal errors
            for _ in todo:
                try:
                    async with http.post(url + "/v1/chat/completions", json=BODY) as answer:
                        body = await answer.read()
                    if answer.status != 200 or not body.endswith(b"data: [DONE]\n\n"):
                        errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return errors, time.perf_counter() - started


def target_launch(name: str, root: Path | None, engine: str, workdir: Path) -> Launch:
    """The gateway of this checkout (``root`` None) or of the checkout at ``root``."""
    settings = {"engines": [{"name": "sim", "url": engine}], "default_engine": False,
                "access_log": False, "log_level": "warning"}
    return gateway_launch(settings, workdir, name, root=root)


def user_system_s(pid: int) -> tuple[float, float]:
    """utime and stime of process ``pid`` in seconds (``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


async def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    await load(url, args.warmup, args.concurrency)
    before = read_stats(pid).cpu_s
    user, system = user_system_s(pid)
    errors, seconds = await load(url, args.requests, args.concurrency)
    cpu = read_stats(pid).cpu_s - before
    user_after, system_after = user_system_s(pid)
    per = 1000 / args.requests
    return {"cpu_ms_per_request": cpu * per, "user_ms_per_request": (user_after - user) * per,
            "system_ms_per_request": (system_after - system) * per,
            "requests_per_s": args.requests / seconds, "errors": errors}


async def profile(url: str, pid: int, args: argparse.Namespace) -> None:
    """A py-spy speedscope profile of the gateway while it serves one round's load."""
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    await load(url, args.warmup, args.concurrency)
    spy = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--output", str(args.profile), "--format",
        "speedscope", "--rate", "500", "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)
    await load(url, args.requests, args.concurrency)
    spy.send_signal(2)
    await asyncio.wait_for(spy.wait(), 60)
    print(f"profile written to {args.profile}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir: Path = args.logs
    targets: list[tuple[str, Path | None]] = [("sluice", None), *args.compare]
    sim = sim_launch({"model": "sim-model", "prefill_base_ms": 1, "decode_step_ms": 1,
                      "max_num_seqs": 4096}, workdir / "sim.log")
    rounds: list[dict[str, Any]] = []
    async with launched(sim, ready_timeout_s=30) as _:
        for number in range(args.rounds):
            order = targets[number % len(targets):] + targets[:number % len(targets)]
            for name, root in order:
                launch = target_launch(name, root, sim.url, workdir)
                async with launched(launch, ready_timeout_s=60, all_engines=True) as process:
                    if args.profile is not None:
                        await profile(launch.url, process.pid, args)
                        return {}
                    row = {"round": number, "target": name,
                           **await measure(launch.url, process.pid, args)}
                print(json.dumps(row), flush=True)
                rounds.append(row)
    summary = {name: {
        "cpu_ms_per_request": [r["cpu_ms_per_request"] for r in rounds if r["target"] == name],
        "median_cpu_ms_per_request": statistics.median(
            r["cpu_ms_per_request"] for r in rounds if r["target"] == name),
        "errors": sum(r["errors"] for r in rounds if r["target"] == name)}
        for name, _ in targets}
    return {"config": {"requests": args.requests, "concurrency": args.concurrency,
                       "warmup": args.warmup, "cpus": os.cpu_count(),
                       "targets": {name: str(root or ".") for name, root in targets}},
            "rounds": rounds, "summary": summary}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                        help="also measure the gateway of the checkout at PATH")
    parser.add_argument("--profile", type=Path, help="write a py-spy profile instead")
    parser.add_argument("--out", type=Path, default=Path("results/cpu_bench.json"))
    parser.add_argument("--logs", type=Path, default=Path("results/cpu_bench_logs"))
    args = parser.parse_args(argv)
    args.compare = [(name, Path(path).resolve()) for name, _, path in
                     (spec.partition("=") for spec in args.compare)]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(bench(args))
    if not result:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, row in result["summary"].items():
        runs = ", ".join(f"{v:.3f}" for v in row["cpu_ms_per_request"])
        print(f"{name}: {row['median_cpu_ms_per_request']:.3f} ms CPU per request "
              f"(rounds {runs}; errors {row['errors']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
