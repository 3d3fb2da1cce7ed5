"""Relay overhead: one simulator engine hit directly, through Sluice and through peers.

Every target is measured in one run, in turns (the order rotates every round, so all
see the same machine state), for several rounds; medians are reported. The engine is
the simulator with a fixed pace (first token after ``prefill_ms``, then one token every
``step_ms`` for every running stream), so any difference between the targets is the
relay's cost. The loads are the scenarios ``loadtests/scenarios/relay_*.yaml``, run
with the harness.

Targets (``--targets``, comma-separated):

- ``direct``: the engine itself;
- ``sluice``: ``sluice serve`` (uvicorn + httptools);
- ``vllm-router``: the Rust vLLM Router (``--policy round_robin``) from the peer
  virtualenv (``make peer``); skipped with a message when that is not installed;
- ``sluice-granian``: the gateway app under granian (``make granian``, optional);
- ``proto-uvicorn``, ``proto-granian``, ``proto-aiohttp``: the minimal relay of
  :mod:`loadtests.relay_protos` on each server, to compare the servers alone;
- with ``--compare NAME=PATH``, the gateway of another checkout (a ``git worktree`` of
  an earlier commit) as target ``NAME``, run by this harness.

    python -m loadtests.relay_bench --out results/relay_bench.json
    python -m loadtests.relay_bench --targets direct,sluice,sluice-granian,proto-uvicorn,\
proto-granian,proto-aiohttp --out results/relay_servers.json

All traffic stays on 127.0.0.1; every run is bounded by request count and a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtests.fleet import engine_fleet, gateway_launch, sim_launch
from loadtests.launch import HOST, ROOT, Launch, free_port
from loadtests.metrics import summarize
from loadtests.runner import Scenario, run

SCENARIOS = [Path(__file__).parent / "scenarios" / f"relay_{name}.yaml"
             for name in ("50x128", "200x256")]
PEER_VENV = ROOT / ".venv-peer"
GRANIAN_PATH = ROOT / ".venv-granian"
DEFAULT_TARGETS = "direct,sluice,vllm-router"
TARGETS = ("direct", "sluice", "vllm-router", "sluice-granian", "proto-uvicorn",
           "proto-granian", "proto-aiohttp")


class Unavailable(Exception):
    """A target that cannot run here (its software is not installed)."""


def launch_for(name: str, engine: str, workdir: Path, args: argparse.Namespace) -> Launch:
    """How to start target ``name`` in front of ``engine``."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = workdir / f"{name}.log"
    gateway = {"engines": [{"name": "sim", "url": engine}], "default_engine": False,
               "access_log": False, "port": port}
    if name == "sluice":
        return gateway_launch(gateway, workdir, "sluice")
    if name in args.compare:
        return gateway_launch(gateway, workdir, name, root=args.compare[name])
    if name == "vllm-router":
        router = args.peer_venv / "bin" / "vllm-router"
        if not router.exists():
            raise Unavailable(f"{router} not found (make peer installs it)")
        return Launch([str(router), "--host", HOST, "--port", str(port), "--worker-urls",
                       engine, "--policy", "round_robin", "--prometheus-port",
                       str(free_port()), "--worker-startup-check-interval", "1",
                       "--log-level", "warning"], url, log)
    if name == "proto-uvicorn" or name == "proto-aiohttp":
        return Launch([sys.executable, "-m", "loadtests.relay_protos", name.split("-")[1],
                       "--port", str(port), "--upstream", engine], url, log)
    # granian targets
    env = granian_env(args.granian_path)
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST,
            "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1",
            "--no-ws", "--log-level", "warning", "--factory"]
    if name == "proto-granian":
        return Launch([*argv, "loadtests.relay_protos:make_asgi"], url, log,
                      {**env, "RELAY_UPSTREAM": engine})
    config = workdir / "sluice-granian.yaml"
    config.write_text(yaml.safe_dump({**gateway, "host": HOST}))
    return Launch([*argv, "loadtests.relay_protos:sluice_asgi"], url, log,
                  {**env, "SLUICE_CONFIG": str(config)}, ready_path="/ready")


def granian_env(path: Path) -> dict[str, str]:
    """PYTHONPATH that finds granian: installed in this environment, or in ``path``
    (a ``pip install --target`` folder, see ``make granian``)."""
    python_path = os.environ.get("PYTHONPATH", "")
    if importlib.util.find_spec("granian") is None:
        if not (path / "granian").is_dir():
            raise Unavailable(f"granian is not installed here nor in {path} "
                              "(make granian installs it)")
        python_path = os.pathsep.join(p for p in (python_path, str(path)) if p)
    return {"PYTHONPATH": python_path or str(ROOT)}


async def one_round(target: str, url: str, scenario: Scenario) -> dict[str, Any]:
    summary = summarize(await run(target, url, scenario, progress=False))
    return {"target": target, "scenario": scenario.name,
            "tok_per_s": summary.output_throughput,
            "ttft_p50_ms": summary.ttft_ms.percentiles["p50"],
            "ttft_p99_ms": summary.ttft_ms.percentiles["p99"],
            "errors": summary.failed}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [Scenario.model_validate(yaml.safe_load(p.read_text())) for p in SCENARIOS]
    workdir: Path = args.logs
    rounds: list[dict[str, Any]] = []
    sim = sim_launch({"model": "sim-model", "prefill_base_ms": args.prefill_ms,
                      "decode_step_ms": args.step_ms, "max_num_seqs": 4096},
                     workdir / "sim.log")
    async with engine_fleet([sim]) as engines:
        names, launches = [], []
        for name in [*args.targets, *args.compare]:
            if name == "direct":
                continue
            try:
                launches.append(launch_for(name, sim.url, workdir, args))
                names.append(name)
            except Unavailable as exc:
                print(f"skipping {name}: {exc}", flush=True)
        async with engine_fleet(launches, ready_timeout_s=60) as fleet:
            targets = [(n, fleet.urls[i]) for i, n in enumerate(names)]
            if "direct" in args.targets:
                targets.insert(0, ("direct", engines.urls[0]))
            for scenario in scenarios:
                for index in range(args.rounds):
                    shift = index % len(targets)
                    for target, url in targets[shift:] + targets[:shift]:
                        row = await one_round(target, url, scenario)
                        rounds.append(row)
                        print(f"  {scenario.name} {target:15s} {row['tok_per_s']:9.0f} tok/s "
                              f"ttft p50 {row['ttft_p50_ms']:7.1f} ms "
                              f"p99 {row['ttft_p99_ms']:7.1f} ms errors {row['errors']}",
                              flush=True)
            if args.profile and "sluice" in names:
                pid = fleet.pid(names.index("sluice"))
                assert pid is not None
                await profile_gateway(pid, fleet.urls[names.index("sluice")], scenarios[-1],
                                      Path(args.profile))
    measured = ["direct", *names] if "direct" in args.targets else names
    return {"config": {"prefill_ms": args.prefill_ms, "step_ms": args.step_ms,
                       "rounds": args.rounds, "cpus": os.cpu_count(), "targets": measured},
            "rounds": rounds, "summary": summarize_rounds(rounds, scenarios, measured)}


async def profile_gateway(pid: int, url: str, scenario: Scenario, out: Path) -> None:
    """A py-spy speedscope profile of the gateway process during one round."""
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    spy = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--output", str(out), "--format", "speedscope",
        "--rate", "200", "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)
    await one_round("sluice", url, scenario)
    spy.send_signal(2)
    await asyncio.wait_for(spy.wait(), 60)
    print(f"profile written to {out}")


def summarize_rounds(rounds: list[dict[str, Any]], scenarios: list[Scenario],
                     targets: list[str]) -> list[dict[str, Any]]:
    """Per scenario and target: medians of the rounds, and the cost against ``direct``."""
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        def med(target: str, field: str, name: str = scenario.name) -> float:
            return float(statistics.median(
                r[field] for r in rounds if r["target"] == target and r["scenario"] == name))
        for target in targets:
            row: dict[str, Any] = {
                "scenario": scenario.name, "target": target,
                "tok_s": med(target, "tok_per_s"),
                "ttft_p50_ms": med(target, "ttft_p50_ms"),
                "ttft_p99_ms": med(target, "ttft_p99_ms"),
                "errors": sum(r["errors"] for r in rounds
                              if r["scenario"] == scenario.name and r["target"] == target),
            }
            if "direct" in targets:
                row["share_of_direct"] = row["tok_s"] / med("direct", "tok_per_s")
                row["added_ttft_p50_ms"] = row["ttft_p50_ms"] - med("direct", "ttft_p50_ms")
                row["added_ttft_p99_ms"] = row["ttft_p99_ms"] - med("direct", "ttft_p99_ms")
            rows.append(row)
    return rows


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| load | target | tok/s | share of direct | TTFT p50 | added TTFT p50 | "
             "added TTFT p99 | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        share = f"{100 * row['share_of_direct']:.1f} %" if "share_of_direct" in row else ""
        added = (f"{row['added_ttft_p50_ms']:+.1f} ms | {row['added_ttft_p99_ms']:+.1f} ms"
                 if row["target"] != "direct" and "added_ttft_p50_ms" in row else " | ")
        lines.append(f"| {row['scenario']} | {row['target']} | {row['tok_s']:,.0f} | {share} | "
                     f"{row['ttft_p50_ms']:.1f} ms | {added} | {row['errors']} |")
    return "\n".join(lines)


def parse_targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets {unknown}; known: {TARGETS}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill-ms", type=float, default=20.0)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--targets", type=parse_targets, default=parse_targets(DEFAULT_TARGETS),
                        help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV,
                        help="virtualenv holding the vllm-router command")
    parser.add_argument("--granian-path", type=Path, default=GRANIAN_PATH,
                        help="folder holding granian when it is not installed here")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                        help="also measure the gateway of the checkout at PATH (e.g. a git "
                             "worktree of an earlier commit) as target NAME")
    parser.add_argument("--out", type=Path, default=Path("results/relay_bench.json"))
    parser.add_argument("--profile", help="write a py-spy speedscope profile of the gateway "
                                          "under the largest load to this file")
    args = parser.parse_args()
    args.compare = {name: Path(path).resolve() for name, _, path in
                    (spec.partition("=") for spec in args.compare)}
    args.logs = args.out.parent / "relay_bench_logs"
    args.logs.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result["summary"]))


if __name__ == "__main__":
    main()
