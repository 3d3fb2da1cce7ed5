"""Gateway memory after large request frames on ``/v1/ws``, and the same bodies over HTTP.

One simulator engine; for each transport a fresh gateway process. Each of ``--rounds``
rounds sends ``--frames`` chat requests whose message is ``--frame-mb`` MB of text (just
under ``websocket.max_message_bytes``, 4 MiB by default): over ``ws``, on one new
``/v1/ws`` socket, all sent at once, each read to its terminal message (``done`` or
``error``: a prompt that long is refused for its context length, which is fine; the
frame was received and parsed), then the socket closed; over ``http``, as many
concurrent ``POST /v1/chat/completions``. The gateway's RSS (``/proc/PID/status``) is
read after every round, then again after ``--idle-s`` seconds without traffic. With
``--compare NAME=PATH`` the gateway of another checkout (e.g. ``git archive`` of an
earlier commit) is measured the same way in the same run.

    python -m loadtests.ws_memory --out results/ws_memory.json
    python -m loadtests.ws_memory --compare before=/tmp/sluice-before --transports ws

All traffic stays on 127.0.0.1; every request is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtests.fleet import gateway_process, sim_launch
from loadtests.launch import launched
from loadtests.proc import read_stats

MIB = 1024 * 1024
WORDS = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def request_body(frame_bytes: int) -> dict[str, Any]:
    """A chat request whose ``/v1/ws`` frame is about ``frame_bytes`` long."""
    text = (WORDS * (frame_bytes // len(WORDS) + 1))[:frame_bytes - 200].decode()
    return {"model": "sim-model", "max_tokens": 4,
            "messages": [{"role": "user", "content": text}]}


def frame(request_id: str, body: dict[str, Any]) -> str:
    return orjson.dumps({"id": request_id, "type": "chat.completions",
                         "body": body}).decode()


async def ws_round(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                   frames: int) -> dict[str, int]:
    """One socket, ``frames`` request frames at once; the count of each terminal type."""
    ends: dict[str, int] = {}
    async with http.ws_connect(url.replace("http", "ws", 1) + "/v1/ws",
                               max_msg_size=16 * MIB) as ws:
        for number in range(frames):
            await ws.send_str(frame(f"r{number}", body))
        pending = {f"r{number}" for number in range(frames)}
        while pending:
            message = await ws.receive_json()
            if message["type"] != "chunk":
                pending.discard(message["id"])
                ends[message["type"]] = ends.get(message["type"], 0) + 1
    return ends


async def http_round(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     frames: int) -> dict[str, int]:
    """``frames`` concurrent POSTs of the same body; the count of each status."""
    payload = orjson.dumps({**body, "stream": True})

    async def one() -> int:
        async with http.post(url + "/v1/chat/completions", data=payload,
                             headers={"content-type": "application/json"}) as answer:
            await answer.read()
            return answer.status

    ends: dict[str, int] = {}
    for status in await asyncio.gather(*(one() for _ in range(frames))):
        ends[str(status)] = ends.get(str(status), 0) + 1
    return ends


def rss_mib(pid: int) -> float:
    return read_stats(pid).rss_bytes / MIB


async def measure(transport: str, name: str, root: Path | None, engine: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    settings = {"engines": [{"name": "e0", "url": engine}], "default_engine": False,
                "access_log": False, "log_level": "warning"}
    body = request_body(int(args.frame_mb * 1_000_000))
    send = ws_round if transport == "ws" else http_round
    timeout = aiohttp.ClientTimeout(total=120)
    async with gateway_process(settings, log_dir=args.logs, name=f"{name}-{transport}",
                               root=root) as gateway, \
            aiohttp.ClientSession(timeout=timeout) as http:
        start = rss_mib(gateway.pid)
        rounds = []
        for number in range(args.rounds):
            ends = await send(http, gateway.url, body, args.frames)
            await asyncio.sleep(args.settle_s)
            rounds.append({"round": number + 1, "rss_mib": rss_mib(gateway.pid), "ends": ends})
            print(f"{name:>8} {transport:>4} round {number + 1:>2}: "
                  f"{rounds[-1]['rss_mib']:7.1f} MiB  {ends}", flush=True)
        await asyncio.sleep(args.idle_s)
        idle = rss_mib(gateway.pid)
        print(f"{name:>8} {transport:>4} idle {args.idle_s:.0f} s: {idle:7.1f} MiB", flush=True)
    return {"target": name, "transport": transport, "start_rss_mib": start,
            "rounds": rounds, "idle_rss_mib": idle}


def table(runs: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one column per run, one row per round, then idle."""
    heads = [f"{run['target']} {run['transport']}" for run in runs]
    lines = ["| MiB | " + " | ".join(heads) + " |", "|---" * (len(runs) + 1) + "|",
             "| start | " + " | ".join(f"{run['start_rss_mib']:.0f}" for run in runs) + " |"]
    for index in range(len(runs[0]["rounds"])):
        lines.append(f"| round {index + 1} | " + " | ".join(
            f"{run['rounds'][index]['rss_mib']:.0f}" for run in runs) + " |")
    lines.append("| idle | " + " | ".join(f"{run['idle_rss_mib']:.0f}" for run in runs) + " |")
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    targets: list[tuple[str, Path | None]] = [("sluice", None), *args.compare]
    sim = sim_launch({"model": "sim-model", "prefill_base_ms": 1, "decode_step_ms": 1},
                     args.logs / "sim.log")
    runs = []
    async with launched(sim, ready_timeout_s=30):
        for transport in args.transports:
            for name, root in targets:
                runs.append(await measure(transport, name, root, sim.url, args))
    return {"config": {"rounds": args.rounds, "frames": args.frames,
                       "frame_mb": args.frame_mb, "idle_s": args.idle_s,
                       "cpus": os.cpu_count(),
                       "targets": {name: str(root or ".") for name, root in targets}},
            "runs": runs}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--frames", type=int, default=5, help="requests per round")
    parser.add_argument("--frame-mb", type=float, default=3.8,
                        help="size of each request in MB (10^6 bytes)")
    parser.add_argument("--settle-s", type=float, default=0.5,
                        help="pause after each round before reading RSS")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--transports", type=lambda text: text.split(","),
                        default=["ws", "http"], help="ws, http or ws,http")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                        help="also measure the gateway of the checkout at PATH")
    parser.add_argument("--out", type=Path, default=Path("results/ws_memory.json"))
    parser.add_argument("--logs", type=Path, default=Path("results/ws_memory_logs"))
    args = parser.parse_args(argv)
    args.compare = [(name, Path(path).resolve()) for name, _, path in
                    (spec.partition("=") for spec in args.compare)]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["runs"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
