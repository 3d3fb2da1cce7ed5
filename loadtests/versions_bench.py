"""Version routing under load: guarded rollouts' timelines, and what shadow mirroring
costs the client.

- **rollout**: two simulator engines (``v1`` serves ``sim-a``, ``v2`` serves ``sim-b``)
  behind two ``sluice serve`` processes sharing a ``redis-server`` of the run's own; the
  alias ``chat`` starts on v1. Steady client load (``--clients`` loops of non-streamed
  requests, each loop alternating between the gateways) while a guarded rollout to v2,
  steps 10, 50, 100 with ``--hold`` seconds each, is started through the first gateway
  and polled through the second. The guard judges v2's error rate and TTFT p99 against
  v1's over each hold, from the measurements both gateways share through Redis. Cases,
  v2's simulator faults (``POST /sim/faults``) reset after each:
  (a) ``healthy``: no fault; (b) ``failing``: ``error_rate`` ``--error-rate``;
  (c) ``slow``: ``slow_token_ms`` ``--slow-token-ms`` added to every engine step of v2.
  The load's requests are not streamed, so the TTFT the gateway measures (the engine's
  first byte) is the whole answer: v2's grows by ``--tokens`` x that, 8 x 50 ms = 0.4 s
  by default, against v1's 50 to 80 ms, about three times the default bound of 1.5 x
  the base's + 50 ms. (At 150 ms a step, v2's answers take 1.3 s, the closed-loop
  clients send it about 4 requests a second at 10 %, and with 2 s holds it was rolled
  back for too few requests, 19 of 20 in 3 holds, before its TTFT was judged.)
  (d) ``takeover``: a healthy v2, the gateway driving the
  rollout is SIGKILLed after its first promotion (the load moved to the other gateway
  just before) and the other takes it over (lease lapsed, ``resume``) and finishes. It
  runs last: the killed gateway is not restarted. Every request's end time, version
  (``x-sluice-version``), status and gateway are recorded, with the rollout's decisions
  and its ``owner``; ``--plot`` gets the timelines (share on v2 and error rate per
  second, decision markers), one panel per case.
- **shadow**: client TTFT (streamed requests) with no mirror and with a 100 % mirror to
  v2 on a slower simulator (``--shadow-decode-ms`` per token), alternating rounds, plus
  the ``sluice_shadow_*`` metrics; one gateway, no Redis.

    python -m loadtests.versions_bench --out results/versions_bench.json \\
        --plot docs/bench/rollout.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

from loadtests.fleet import GatewayProcess, engine_fleet, gateway_process, sim_launch
from loadtests.launch import kill, redis_server
from loadtests.versions_report import driver, markdown, plot

ADMIN_TOKEN = "bench-admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API_KEY = "sk-bench-0123456789abcdef"
KEY = {"Authorization": f"Bearer {API_KEY}"}
MODELS = {"v1": "sim-a", "v2": "sim-b"}
SIM = {"prefill_base_ms": 5.0, "decode_step_ms": 5.0, "max_num_seqs": 1024}
BOUNDS = {"max_error_rate": 0.05, "max_ttft_p99_ratio": 1.5, "ttft_p99_slack_s": 0.05,
          "min_requests": 20, "check_interval_s": 0.25, "max_hold_factor": 3}
"""The default ``versions.rollout`` bounds (``docs/reference/configuration.md``), checked
every 250 ms instead of every second (so a driver's lease, 3 checks, lapses 750 ms after
it dies)."""
NO_FAULTS = {"error_rate": 0.0, "slow_token_ms": 0.0}


def gateway_settings(urls: Sequence[str], shadow_in_flight: int = 16,
                     redis: str = "") -> dict[str, Any]:
    return {
        "default_engine": False, "access_log": False, "log_level": "warning",
        "health_interval_s": 0.5, "admin": {"token": ADMIN_TOKEN}, "api_keys": [API_KEY],
        "observability": {"open": True}, "redis": {"url": redis},
        "engines": [{"name": name, "url": url} for name, url in zip(MODELS, urls, strict=True)],
        "versions": {"rollout": BOUNDS, "shadow_max_in_flight": shadow_in_flight,
                     "aliases": {"chat": {"versions": {n: {"model": m}
                                                      for n, m in MODELS.items()},
                                          "weights": {"v1": 1}}}},
    }  # fmt: skip


class Answer(NamedTuple):
    """One request of the load: when it ended, the version that served it ("?" when
    none said), its status (0: no answer) and the gateway it went through."""

    t: float
    version: str
    status: int
    gateway: str


class Load:
    """``clients`` loops sending non-streamed requests to the alias until stopped, each
    loop through the gateways of ``urls`` in turn (assign ``urls`` to move the load);
    every request's ``Answer``."""

    def __init__(self, urls: Sequence[str], clients: int, tokens: int) -> None:
        self.urls, self.clients, self.tokens = list(urls), clients, tokens
        self.records: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Load:
        self._http = httpx.AsyncClient(timeout=30, headers=KEY)
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.clients)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._http is not None
        await self._http.aclose()

    async def _loop(self, client: int) -> None:
        assert self._http is not None
        body = {"model": "chat", "max_tokens": self.tokens,
                "messages": [{"role": "user", "content": "hello"}]}
        n = 0
        while not self._stop.is_set():
            n += 1
            url = self.urls[(client + n) % len(self.urls)]
            try:
                response = await self._http.post(url + "/v1/chat/completions", json=body,
                                                  headers={"x-request-id": f"load-{client}-"
                                                           f"{n}-{time.monotonic_ns()}"})
                version = response.headers.get("x-sluice-version") or \
                    _version_of_engine(response.headers.get("x-sluice-engine"))
                self.records.append(Answer(time.time(), version, response.status_code, url))
            except httpx.HTTPError:
                self.records.append(Answer(time.time(), "?", 0, url))


def _version_of_engine(engine: str | None) -> str:
    """The engines are named after the version they serve."""
    return engine if engine in MODELS else "?"


@dataclass(frozen=True)
class Case:
    """One rollout to v2: the faults v2's simulator has during it, and whether the
    gateway driving it is SIGKILLed after its first promotion."""

    name: str
    label: str
    faults: Mapping[str, float] = field(default_factory=dict)
    kill_driver: bool = False


def cases(args: argparse.Namespace) -> list[Case]:
    """The rollout cases, in order; the one that kills a gateway runs last."""
    return [
        Case("healthy", "healthy v2"),
        Case("failing", f"v2 failing {args.error_rate:.0%} of its requests",
             {"error_rate": args.error_rate}),
        Case("slow", f"v2 {args.slow_token_ms:g} ms slower per token",
             {"slow_token_ms": args.slow_token_ms}),
        Case("takeover", "healthy v2, its driver SIGKILLed after the first promotion",
             kill_driver=True),
    ]


def pid_of(owner: str) -> int:
    """A rollout's ``owner`` (a replica id) starts with its process id."""
    return int(owner.split("-")[0])


async def rollout_case(gateways: Mapping[str, GatewayProcess], sims: Sequence[str],
                       args: argparse.Namespace, case: Case) -> dict[str, Any]:
    """One guarded rollout to v2 under load, started through the first gateway and polled
    through the last (which survives a ``kill_driver`` case)."""
    ordered = list(gateways.values())
    first, last = ordered[0], ordered[-1]
    names = {gw.pid: name for name, gw in gateways.items()}
    killed: tuple[str, float] | None = None
    async with httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        (await http.put(first.url + "/admin/versions/chat", json={"weights": {"v1": 1}})
         ).raise_for_status()
        (await http.post(sims[1] + "/sim/faults", json={**NO_FAULTS, **case.faults})
         ).raise_for_status()
        try:
            async with Load([gw.url for gw in ordered], args.clients, args.tokens) as load:
                await asyncio.sleep(args.lead)
                began = time.time()
                (await http.post(first.url + "/admin/versions/chat/rollout", json={
                    "to": "v2", "steps": [10, 50, 100], "hold_s": args.hold})
                 ).raise_for_status()
                while True:  # polling the admin API, as an operator would
                    response = await http.get(last.url + "/admin/versions/chat/rollout")
                    state = response.raise_for_status().json()
                    if state["state"] != "running":
                        break
                    if case.kill_driver and killed is None and state["step"] >= 1:
                        killed = await kill_driver(gateways, names[pid_of(state["owner"])],
                                                   load)
                    await asyncio.sleep(0.2)
                await asyncio.sleep(args.lead)
        finally:
            (await http.post(sims[1] + "/sim/faults", json=NO_FAULTS)).raise_for_status()
    return summary(case, state, load.records, began - args.lead, gateways, killed)


async def kill_driver(gateways: Mapping[str, GatewayProcess], driver: str,
                      load: Load) -> tuple[str, float]:
    """Move the load off the ``driver`` gateway, give its requests a moment to end,
    SIGKILL it; (its name, when)."""
    load.urls = [gw.url for name, gw in gateways.items() if name != driver]
    await asyncio.sleep(0.5)
    kill(gateways[driver].process)
    return driver, time.time()


def summary(case: Case, state: Mapping[str, Any], answers: Sequence[Answer], origin: float,
            gateways: Mapping[str, GatewayProcess], killed: tuple[str, float] | None
            ) -> dict[str, Any]:
    """A case's figures; times in seconds from ``origin`` (the load's start). The ending
    decision is the last one judged on figures (the ``breach`` before a rollback, the
    ``promote`` before ``done``)."""
    names = {gw.pid: name for name, gw in gateways.items()}
    by_url = {gw.url: name for name, gw in gateways.items()}
    records = [a._replace(t=a.t - origin) for a in answers]
    decisions = [{**d, "t": d["at"] - origin} for d in state["decisions"]]
    failed = [r for r in records if r.status != 200]
    step = next(d for d in decisions if d["action"] == "step")
    ending = [d for d in decisions if d["new"]][-1] if any(d["new"] for d in decisions) \
        else decisions[-1]
    resumed = [d for d in decisions if d["action"] == "resume"]
    return {
        "case": case.name, "label": case.label, "faults": dict(case.faults),
        "state": state["state"], "owner": state["owner"],
        "driven_by": names.get(pid_of(state["owner"]), state["owner"]),
        "started_by": next(iter(gateways)),
        "killed": None if killed is None else {"gateway": killed[0], "t": killed[1] - origin},
        "resumed": [d["reason"] for d in resumed],
        "rollout_started_s": step["t"], "ended_after_s": decisions[-1]["t"] - step["t"],
        "ending": {k: ending[k] for k in ("action", "step", "percent", "reason", "new",
                                          "base", "t")},
        "decisions": decisions, "requests": len(records),
        "requests_by_version": dict(sorted(Counter(r.version for r in records).items())),
        "requests_by_gateway": dict(sorted(Counter(by_url[r.gateway] for r in records
                                                   ).items())),
        "failed": len(failed),
        "failed_on_canary": sum(1 for r in failed if r.version == "v2"),
        "failed_other": sum(1 for r in failed if r.version != "v2"),
        "per_second": per_second(records),
    }


def per_second(records: Sequence[Answer]) -> list[dict[str, Any]]:
    """Requests ended in each second: by version, and how many failed."""
    if not records:
        return []
    seconds = int(max(r.t for r in records)) + 1
    rows = [{"t": s, "v1": 0, "v2": 0, "other": 0, "errors": 0} for s in range(seconds)]
    for t, version, status, _ in records:
        row = rows[int(t)]
        row[version if version in MODELS else "other"] += 1
        row["errors"] += status != 200
    return rows


async def ttft_round(url: str, clients: int, requests: int, tokens: int) -> list[float]:
    """TTFT (ms) of ``requests`` streamed requests, ``clients`` at a time."""
    body = {"model": "chat", "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}
    samples: list[float] = []
    left = iter(range(requests))

    async def loop(http: httpx.AsyncClient) -> None:
        for _ in left:
            began = time.perf_counter()
            first: float | None = None
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: ") and '"content"' in line:
                        first = time.perf_counter()
            if response.status_code == 200 and first is not None:
                samples.append((first - began) * 1000)

    async with httpx.AsyncClient(base_url=url, timeout=60, headers=KEY) as http:
        await asyncio.gather(*(loop(http) for _ in range(clients)))
    return samples


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def shadow_metrics(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(url + "/metrics")).text
    out = {f"shadow_{o}": metric_sum(text, "sluice_shadow_requests_total", outcome=o)
           for o in ("ok", "error", "dropped", "no_engine")}
    out["divergence"] = metric_sum(text, "sluice_shadow_divergence_total")
    for reason in ("status", "tokens", "text"):
        out[f"divergence_{reason}"] = metric_sum(text, "sluice_shadow_divergence_total",
                                                 reason=reason)
    for name in ("latency_ratio", "text_similarity"):
        count = metric_sum(text, f"sluice_shadow_{name}_count")
        out[f"{name}_mean"] = (metric_sum(text, f"sluice_shadow_{name}_sum") / count
                               if count else 0.0)
    return out


async def shadow_case(args: argparse.Namespace) -> dict[str, Any]:
    """TTFT with no mirror and with every request mirrored to a slower v2."""
    fast = {**SIM, "model": MODELS["v1"], "decode_step_ms": args.decode_ms}
    slow = {**SIM, "model": MODELS["v2"], "decode_step_ms": args.shadow_decode_ms}
    launches = [sim_launch(fast, args.logs / "shadow-v1.log"),
                sim_launch(slow, args.logs / "shadow-v2.log")]
    rounds: list[dict[str, Any]] = []
    async with (engine_fleet(launches) as fleet,
                gateway_process(gateway_settings(fleet.urls, args.shadow_in_flight),
                                log_dir=args.logs, name="gateway-shadow") as gw,
                httpx.AsyncClient(base_url=gw.url, timeout=30, headers=ADMIN) as http):
        await ttft_round(gw.url, args.clients, 2 * args.clients, args.shadow_tokens)  # warm
        for index in range(2 * args.rounds):
            mirror = index % 2 == 1
            (await http.put("/admin/versions/chat", json={
                "weights": {"v1": 1}, "shadow": {"v2": 1.0} if mirror else {}})
             ).raise_for_status()
            samples = await ttft_round(gw.url, args.clients, args.requests,
                                       args.shadow_tokens)
            row = {"mirror": mirror, "ok": len(samples),
                   "ttft_p50_ms": float(np.percentile(samples or [0.0], 50)),
                   "ttft_p99_ms": float(np.percentile(samples or [0.0], 99))}
            rounds.append(row)
            print(f"  shadow {'100 %' if mirror else 'off  '} TTFT p50 "
                  f"{row['ttft_p50_ms']:6.1f} ms p99 {row['ttft_p99_ms']:6.1f} ms "
                  f"({row['ok']} ok)", flush=True)
        await asyncio.sleep(args.shadow_decode_ms * args.shadow_tokens / 1000 + 1)
        metrics = await shadow_metrics(gw.url)
    summary = {}
    for mirror in (False, True):
        mine = [r for r in rounds if r["mirror"] == mirror]
        summary["mirror_100" if mirror else "no_mirror"] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("ttft_p50_ms", "ttft_p99_ms")} | {
            "ok": sum(r["ok"] for r in mine), "requests": args.requests * len(mine)}
    return {"rounds": rounds, "summary": summary, "metrics": metrics}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    launches = [sim_launch({**SIM, "model": MODELS[v]}, args.logs / f"rollout-{v}.log")
                for v in MODELS]
    async with (engine_fleet(launches) as fleet, redis_server(args.logs) as redis):
        settings = gateway_settings(fleet.urls, redis=redis)
        async with (gateway_process(settings, log_dir=args.logs, name="gateway-1") as one,
                    gateway_process(settings, log_dir=args.logs, name="gateway-2") as two):
            rollout = {}
            for case in cases(args):
                result = await rollout_case({"gateway-1": one, "gateway-2": two}, fleet.urls,
                                            args, case)
                rollout[case.name] = result
                print(f"  rollout {case.name:8s} {result['state']:11s} after "
                      f"{result['ended_after_s']:5.2f} s, driven by {driver(result)}: "
                      f"{result['ending']['action']} ({result['ending']['reason']}); "
                      f"{result['requests']} requests {result['requests_by_version']}, "
                      f"{result['failed']} failed ({result['failed_on_canary']} on v2, "
                      f"{result['failed_other']} others)", flush=True)
    shadow = await shadow_case(args)
    return {"config": {k: v for k, v in vars(args).items() if k not in ("logs", "out", "plot")}
            | {"cpus": os.cpu_count(), "bounds": BOUNDS, "sim": SIM, "gateways": 2,
               "store": "redis"},
            "rollout": rollout, "shadow": shadow}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8, help="per rollout request")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per rollout step")
    parser.add_argument("--lead", type=float, default=3.0,
                        help="seconds of load before and after each rollout")
    parser.add_argument("--error-rate", type=float, default=0.3,
                        help="the failing v2's injected error rate")
    parser.add_argument("--slow-token-ms", type=float, default=50.0,
                        help="the slow v2's added delay per engine step (every token)")
    parser.add_argument("--rounds", type=int, default=3, help="shadow rounds of each kind")
    parser.add_argument("--requests", type=int, default=200, help="per shadow round")
    parser.add_argument("--shadow-tokens", type=int, default=32)
    parser.add_argument("--decode-ms", type=float, default=5.0, help="v1's decode step")
    parser.add_argument("--shadow-decode-ms", type=float, default=20.0,
                        help="the shadow v2's decode step")
    parser.add_argument("--shadow-in-flight", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results/versions_bench.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/bench/rollout.png"))
    args = parser.parse_args()
    args.logs = args.out.parent / "versions_bench_logs"
    args.logs.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    result = asyncio.run(bench(args))
    result["wall_s"] = round(time.monotonic() - began, 1)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result["rollout"], args.hold, args.plot)
    print(markdown(result))
    print(f"\n{result['wall_s']:.0f} s in all")


if __name__ == "__main__":
    main()
