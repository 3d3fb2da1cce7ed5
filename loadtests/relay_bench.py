"""Relay overhead: the same simulator engine hit directly and through the gateway.

Every target is measured alternately in one run (so both see the same machine state),
for several rounds; medians are reported. The engine is the simulator with a fixed
pace (first token after ``prefill_ms``, then one token every ``step_ms`` for every
running stream), so any difference between the targets is the gateway's cost.

    python -m loadtests.relay_bench --out results/relay_bench.json

All traffic stays on 127.0.0.1; every run is bounded by request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

LOADS = ((50, 128), (200, 256))


@dataclass
class RoundResult:
    target: str
    streams: int
    tokens: int
    tok_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def one_stream(http: aiohttp.ClientSession, url: str, tokens: int,
                     ttfts: list[float]) -> int:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "benchmark"}],
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    pending = b""
    completion = 0
    async with http.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            return -1
        async for data in response.content.iter_any():
            if first is None and b'"content":"' in data:
                first = time.perf_counter()
            pending += data
        for event in pending.split(b"\n\n"):
            if b'"usage":{' in event:
                completion = json.loads(event[6:])["usage"]["completion_tokens"]
    if first is not None:
        ttfts.append(first - started)
    return completion


async def run_round(target: str, url: str, streams: int, tokens: int,
                    timeout_s: float) -> RoundResult:
    ttfts: list[float] = []
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        began = time.perf_counter()
        results = await asyncio.gather(
            *(one_stream(http, url, tokens, ttfts) for _ in range(streams)),
            return_exceptions=True)
        wall = time.perf_counter() - began
    counts = [r for r in results if isinstance(r, int) and r >= 0]
    total = sum(counts)
    ttfts.sort()
    return RoundResult(
        target=target, streams=streams, tokens=tokens, tok_per_s=total / wall,
        ttft_p50_ms=1000 * statistics.median(ttfts) if ttfts else float("nan"),
        ttft_p99_ms=1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]
        if ttfts else float("nan"),
        errors=len(results) - len(counts) + sum(1 for c in counts if c != tokens))


async def wait_http(url: str, path: str, timeout_s: float = 30) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                async with http.get(url + path) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s} s")


def start_processes(prefill_ms: float, step_ms: float,
                    workdir: Path) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "engines.simulator", "--port", str(sim_port),
         "--model", "sim-model", "--prefill-base-ms", str(prefill_ms),
         "--decode-step-ms", str(step_ms), "--max-num-seqs", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = workdir / "gateway.yaml"
    config.write_text(json.dumps({"engines": [
        {"name": "sim", "url": f"http://127.0.0.1:{sim_port}"}]}))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config),
         "--port", str(gw_port)],
        stdout=subprocess.DEVNULL, stderr=(workdir / "gateway.log").open("wb"))
    return [sim, gateway], f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"


async def bench(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        procs, direct, gateway = start_processes(args.prefill_ms, args.step_ms, Path(tmp))
        try:
            await wait_http(direct, "/health")
            await wait_http(gateway, "/ready")
            targets = {"direct": direct, "gateway": gateway}
            rounds: list[RoundResult] = []
            for streams, tokens in LOADS:
                for target, url in targets.items():  # warm-up, not reported
                    await run_round(target, url, min(streams, 20), 16, args.timeout_s)
                for r in range(args.rounds):
                    order = list(targets.items()) if r % 2 == 0 else list(targets.items())[::-1]
                    for target, url in order:
                        result = await run_round(target, url, streams, tokens, args.timeout_s)
                        rounds.append(result)
                        print(f"  {streams}x{tokens} {target:8s} {result.tok_per_s:9.0f} tok/s "
                              f"ttft p50 {result.ttft_p50_ms:7.1f} ms "
                              f"p99 {result.ttft_p99_ms:7.1f} ms errors {result.errors}",
                              flush=True)
            if args.profile:
                await profile_gateway(procs[1].pid, gateway, args)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    return {"config": {"prefill_ms": args.prefill_ms, "step_ms": args.step_ms,
                       "rounds": args.rounds, "cpus": os.cpu_count()},
            "rounds": [asdict(r) for r in rounds], "summary": summarize(rounds)}


async def profile_gateway(pid: int, url: str, args: argparse.Namespace) -> None:
    out = Path(args.profile)
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    spy = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--output", str(out), "--format", "speedscope",
        "--rate", "200", "--nonblocking",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1)
    streams, tokens = LOADS[-1]
    await run_round("gateway", url, streams, tokens, args.timeout_s)
    spy.send_signal(2)
    await asyncio.wait_for(spy.wait(), 60)
    print(f"profile written to {out}")


def summarize(rounds: list[RoundResult]) -> list[dict[str, float | int]]:
    rows: list[dict[str, float | int]] = []
    for streams, tokens in LOADS:
        def med(target: str, field: str, s: int = streams, t: int = tokens) -> float:
            values = [getattr(r, field) for r in rounds
                      if r.target == target and r.streams == s and r.tokens == t]
            return float(statistics.median(values))
        rows.append({
            "streams": streams, "tokens": tokens,
            "direct_tok_s": med("direct", "tok_per_s"),
            "gateway_tok_s": med("gateway", "tok_per_s"),
            "throughput_ratio": med("gateway", "tok_per_s") / med("direct", "tok_per_s"),
            "direct_ttft_p50_ms": med("direct", "ttft_p50_ms"),
            "gateway_ttft_p50_ms": med("gateway", "ttft_p50_ms"),
            "added_ttft_p50_ms": med("gateway", "ttft_p50_ms") - med("direct", "ttft_p50_ms"),
            "added_ttft_p99_ms": med("gateway", "ttft_p99_ms") - med("direct", "ttft_p99_ms"),
            "errors": sum(r.errors for r in rounds if r.streams == streams),
        })
    return rows


def markdown(summary: list[dict[str, float | int]]) -> str:
    lines = ["| load | direct tok/s | gateway tok/s | ratio | TTFT p50 direct | "
             "added TTFT p50 | added TTFT p99 | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(
            f"| {row['streams']} x {row['tokens']} | {row['direct_tok_s']:,.0f} | "
            f"{row['gateway_tok_s']:,.0f} | {100 * row['throughput_ratio']:.1f} % | "
            f"{row['direct_ttft_p50_ms']:.1f} ms | {row['added_ttft_p50_ms']:+.1f} ms | "
            f"{row['added_ttft_p99_ms']:+.1f} ms | {row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill-ms", type=float, default=20.0)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("results/relay_bench.json"))
    parser.add_argument("--profile", help="write a py-spy speedscope profile of the gateway "
                                          "under the largest load to this file")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result["summary"]))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
