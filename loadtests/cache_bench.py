"""Response cache hit latency: a cached answer against ``/health``, through one gateway.

One simulator engine and one ``sluice serve`` process. The cache is warmed with one
deterministic request (``temperature: 0``), non-streamed and streamed; then, one at a
time on one keep-alive connection, the three requests take turns for ``--rounds``
rounds: ``GET /health`` (the gateway's cheapest answer: no pipeline at all), the
non-streamed hit, and the streamed hit (read to its ``[DONE]``). Every hit is checked
(``x-sluice-cache: hit``) and the engine's request counter is checked unchanged at the
end. The result is each kind's p50 and p99, and what a hit adds to ``/health``. With
``--redis`` the cache lives in a ``redis-server`` of the run's own (on a free port, no
persistence) instead of the gateway's memory.

    python -m loadtests.cache_bench --rounds 2000 --out results/cache_bench.json
    python -m loadtests.cache_bench --rounds 2000 --redis

All traffic stays on 127.0.0.1; the run is bounded by its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from loadtests.fleet import gateway_process, sim_fleet
from loadtests.launch import HOST, free_port

BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 32, "temperature": 0}
KINDS = ("health", "hit", "hit_stream")


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def engine_requests(http: httpx.AsyncClient, engine: str) -> float:
    page = (await http.get(engine + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("vllm:request_success_total"))


async def one(http: httpx.AsyncClient, kind: str) -> float:
    """Seconds for one request of ``kind``, its body read to the end."""
    start = time.perf_counter()
    if kind == "health":
        response = await http.get("/health")
    else:
        response = await http.post("/v1/chat/completions",
                                   json={**BODY, "stream": kind == "hit_stream"})
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{kind}: HTTP {response.status_code}")
    if kind != "health" and response.headers.get("x-sluice-cache") != "hit":
        raise RuntimeError(f"{kind}: not a hit ({response.headers.get('x-sluice-cache')})")
    return elapsed


async def measure(gateway: str, engine: str, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        for stream in (False, True):  # warm the cache
            await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
        before = await engine_requests(http, engine)
        for kind in KINDS:  # warm the connection and the code paths
            for _ in range(50):
                await one(http, kind)
        for n in range(rounds):
            order = KINDS[n % 3:] + KINDS[:n % 3]  # rotate: no kind always goes first
            for kind in order:
                samples[kind].append(await one(http, kind))
        after = await engine_requests(http, engine)
    if after != before:
        raise RuntimeError(f"the engine was called during the run ({before} -> {after})")
    result: dict[str, Any] = {"rounds": rounds, "engine_calls_during_run": after - before}
    for kind, values in samples.items():
        result[kind] = {"p50_ms": percentile(values, 50) * 1000,
                        "p99_ms": percentile(values, 99) * 1000,
                        "mean_ms": statistics.fmean(values) * 1000}
    for kind in ("hit", "hit_stream"):
        result[f"{kind}_added"] = {
            q: result[kind][q] - result["health"][q] for q in ("p50_ms", "p99_ms")}
    return result


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A ``redis-server`` on a free port without persistence; its URL. Stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on the PATH")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", HOST, "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(logs)) if args.redis else ""
        async with sim_fleet(1, {"decode_step_ms": 1, "prefill_base_ms": 1},
                             log_dir=logs) as fleet:
            engine = fleet.urls[0]
            settings = {"engines": [{"name": "e0", "url": engine}], "default_engine": False,
                        "access_log": False, "log_level": "warning",
                        "cache": {"enabled": True}, "redis": {"url": redis}}
            async with gateway_process(settings, log_dir=logs) as gateway:
                result = await measure(gateway.url, engine, args.rounds)
    return {"store": "redis" if args.redis else "memory", **result}


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--redis", action="store_true",
                        help="keep the cache in a redis-server of the run's own")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    cli()
