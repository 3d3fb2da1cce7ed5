"""Version routing under load: a guarded rollout's timeline, and what shadow mirroring
costs the client.

Two simulator engines (``v1`` serves ``sim-a``, ``v2`` serves ``sim-b``) behind one
``sluice serve`` process whose alias ``chat`` starts on v1.

- **rollout**: steady client load (``--clients`` loops, non-streamed requests) while the
  admin API runs a guarded rollout to v2, steps 10, 50, 100 with ``--hold`` seconds each:
  (a) a healthy v2, (b) v2 with an injected error rate (``POST /sim/faults``). Every
  request's end time, version (``x-sluice-version``) and status are recorded, with the
  rollout's decisions; ``--plot`` gets the timeline (share on v2 and error rate per
  second, decision markers).
- **shadow**: client TTFT (streamed requests) with no mirror and with a 100 % mirror to
  v2 on a slower simulator (``--shadow-decode-ms`` per token), alternating rounds, plus
  the ``sluice_shadow_*`` metrics.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.fleet import GatewayProcess, engine_fleet, gateway_process, sim_launch

ADMIN_TOKEN = "bench-admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API_KEY = "sk-bench-0123456789abcdef"
KEY = {"Authorization": f"Bearer {API_KEY}"}
MODELS = {"v1": "sim-a", "v2": "sim-b"}
SIM = {"prefill_base_ms": 5.0, "decode_step_ms": 5.0, "max_num_seqs": 1024}
BOUNDS = {"max_error_rate": 0.05, "max_ttft_p99_ratio": 1.5, "ttft_p99_slack_s": 0.05,
          "min_requests": 20, "check_interval_s": 0.25, "max_hold_factor": 3}
"""The README's default bounds, checked every 250 ms instead of every second."""


def gateway_settings(urls: Sequence[str], shadow_in_flight: int = 16) -> dict[str, Any]:
    return {
        "default_engine": False, "access_log": False, "log_level": "warning",
        "health_interval_s": 0.5, "admin": {"token": ADMIN_TOKEN}, "api_keys": [API_KEY],
        "observability": {"open": True},
        "engines": [{"name": name, "url": url} for name, url in zip(MODELS, urls, strict=True)],
        "versions": {"rollout": BOUNDS, "shadow_max_in_flight": shadow_in_flight,
                     "aliases": {"chat": {"versions": {n: {"model": m}
                                                      for n, m in MODELS.items()},
                                          "weights": {"v1": 1}}}},
    }  # fmt: skip


class Load:
    """``clients`` loops sending non-streamed requests to the alias until stopped; every
    request's (end time, version, status)."""

    def __init__(self, url: str, clients: int, tokens: int) -> None:
        self.url, self.clients, self.tokens = url, clients, tokens
        self.records: list[tuple[float, str, int]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Load:
        self._http = httpx.AsyncClient(base_url=self.url, timeout=30, headers=KEY)
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
            try:
                response = await self._http.post("/v1/chat/completions", json=body, headers={
                    "x-request-id": f"load-{client}-{n}-{time.monotonic_ns()}"})
                version = response.headers.get("x-sluice-version") or \
                    _version_of_engine(response.headers.get("x-sluice-engine"))
                self.records.append((time.time(), version, response.status_code))
            except httpx.HTTPError:
                self.records.append((time.time(), "?", 0))


def _version_of_engine(engine: str | None) -> str:
    """The engines are named after the version they serve."""
    return engine if engine in MODELS else "?"


async def rollout_case(gw: GatewayProcess, sims: Sequence[str], args: argparse.Namespace,
                       error_rate: float) -> dict[str, Any]:
    """One guarded rollout to v2 under load (v2 failing ``error_rate`` of its requests)."""
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, headers=ADMIN) as http:
        (await http.put("/admin/versions/chat", json={"weights": {"v1": 1}})).raise_for_status()
        (await http.post(sims[1] + "/sim/faults", json={"error_rate": error_rate})
         ).raise_for_status()
        async with Load(gw.url, args.clients, args.tokens) as load:
            await asyncio.sleep(args.lead)
            began = time.time()
            started = await http.post("/admin/versions/chat/rollout", json={
                "to": "v2", "steps": [10, 50, 100], "hold_s": args.hold})
            started.raise_for_status()
            while True:  # polling the admin API, as an operator would
                state = (await http.get("/admin/versions/chat/rollout")).json()
                if state["state"] != "running":
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.lead)
        (await http.post(sims[1] + "/sim/faults", json={"error_rate": 0.0})).raise_for_status()
    origin = began - args.lead
    records = [(t - origin, v, s) for t, v, s in load.records]
    decisions = [{**d, "t": d["at"] - origin} for d in state["decisions"]]
    failed = [r for r in records if r[2] != 200]
    step = next(d for d in decisions if d["action"] == "step")
    last = decisions[-1]
    return {
        "error_rate": error_rate, "state": state["state"], "rollout_started_s": began - origin,
        "ended_after_s": last["t"] - step["t"], "decisions": decisions,
        "requests": len(records),
        "requests_by_version": {v: sum(1 for r in records if r[1] == v)
                                for v in sorted({r[1] for r in records})},
        "failed": len(failed),
        "failed_on_canary": sum(1 for r in failed if r[1] == "v2"),
        "failed_other": sum(1 for r in failed if r[1] != "v2"),
        "per_second": per_second(records),
    }


def per_second(records: Sequence[tuple[float, str, int]]) -> list[dict[str, Any]]:
    """Requests ended in each second: by version, and how many failed."""
    if not records:
        return []
    seconds = int(max(r[0] for r in records)) + 1
    rows = [{"t": s, "v1": 0, "v2": 0, "other": 0, "errors": 0} for s in range(seconds)]
    for t, version, status in records:
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


def plot(cases: Mapping[str, dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6.5))
    axes = fig.subplots(len(cases), 1, squeeze=False)[:, 0]
    colors = {"step": "tab:blue", "promote": "tab:green", "breach": "tab:red",
              "rollback": "tab:red", "done": "tab:green"}
    for ax, (title, case) in zip(axes, cases.items(), strict=True):
        rows = case["per_second"]
        t = [r["t"] + 0.5 for r in rows]
        total = [max(1, r["v1"] + r["v2"] + r["other"]) for r in rows]
        ax.plot(t, [100 * r["v2"] / n for r, n in zip(rows, total, strict=True)],
                color="tab:blue", marker=".", label="share of requests on v2 (%)")
        ax.plot(t, [100 * r["errors"] / n for r, n in zip(rows, total, strict=True)],
                color="tab:red", marker=".", label="failed requests (%)")
        for d in case["decisions"]:
            if d["action"] in colors:
                ax.axvline(d["t"], color=colors[d["action"]], ls="--", alpha=0.6)
            if d["action"] in ("step", "rollback", "done"):
                ax.annotate(f"{d['action']} {d['percent']:g}%", (d["t"], 102), fontsize=7,
                            rotation=90, va="bottom",
                            ha="right" if d["action"] == "step" else "left",
                            color=colors[d["action"]])
        ax.set_ylim(-2, 135)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("%")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="center right")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    launches = [sim_launch({**SIM, "model": MODELS[v]}, args.logs / f"rollout-{v}.log")
                for v in MODELS]
    async with (engine_fleet(launches) as fleet,
                gateway_process(gateway_settings(fleet.urls), log_dir=args.logs,
                                name="gateway-rollout") as gw):
        rollout = {}
        for name, error_rate in (("healthy", 0.0), ("failing", args.error_rate)):
            case = await rollout_case(gw, fleet.urls, args, error_rate)
            rollout[name] = case
            print(f"  rollout {name:8s} {case['state']:12s} after {case['ended_after_s']:5.2f}"
                  f" s: {case['requests']} requests, {case['failed']} failed "
                  f"({case['failed_on_canary']} on v2, {case['failed_other']} others)",
                  flush=True)
    shadow = await shadow_case(args)
    return {"config": {k: v for k, v in vars(args).items() if k not in ("logs", "out", "plot")}
            | {"cpus": os.cpu_count(), "bounds": BOUNDS, "sim": SIM},
            "rollout": rollout, "shadow": shadow}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| rollout | v2 error rate | outcome | ended after | requests | failed on v2 "
             "| failed others |", "|---|---|---|---|---|---|---|"]
    for name, case in result["rollout"].items():
        lines.append(f"| {name} | {case['error_rate']:.0%} | {case['state']} | "
                     f"{case['ended_after_s']:.2f} s | {case['requests']:,} | "
                     f"{case['failed_on_canary']} | {case['failed_other']} |")
    shadow = result["shadow"]
    lines += ["", "| shadow | TTFT p50 | TTFT p99 | ok / requests |", "|---|---|---|---|"]
    for name, row in shadow["summary"].items():
        lines.append(f"| {name} | {row['ttft_p50_ms']:.1f} ms | {row['ttft_p99_ms']:.1f} ms | "
                     f"{row['ok']} / {row['requests']} |")
    m = shadow["metrics"]
    lines.append(f"\nshadow metrics: ok {m['shadow_ok']:.0f}, error {m['shadow_error']:.0f}, "
                 f"dropped {m['shadow_dropped']:.0f}, divergence by reason: status "
                 f"{m['divergence_status']:.0f}, tokens {m['divergence_tokens']:.0f}, text "
                 f"{m['divergence_text']:.0f}; mean text similarity "
                 f"{m['text_similarity_mean']:.2f}, mean latency ratio "
                 f"{m['latency_ratio_mean']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8, help="per rollout request")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per rollout step")
    parser.add_argument("--lead", type=float, default=3.0,
                        help="seconds of load before and after each rollout")
    parser.add_argument("--error-rate", type=float, default=0.3,
                        help="the failing v2's injected error rate")
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
    result = asyncio.run(bench(args))
    args.out.write_text(json.dumps(result, indent=2))
    plot({f"healthy v2: promoted at every step (hold {args.hold:g} s)": result["rollout"][
              "healthy"],
          f"v2 failing {args.error_rate:.0%} of its requests: rolled back": result["rollout"][
              "failing"]}, args.plot)
    print(markdown(result))


if __name__ == "__main__":
    main()
