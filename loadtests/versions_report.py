"""The versions benchmark's report: the rollout timelines (one panel per case) and the
markdown tables, from the result ``loadtests.versions_bench`` writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLORS = {"step": "tab:blue", "promote": "tab:green", "breach": "tab:red",
          "rollback": "tab:red", "done": "tab:green", "resume": "tab:purple"}
LABELLED = ("step", "rollback", "done", "resume")


def outcome(case: Mapping[str, Any]) -> str:
    """How the rollout ended, in words."""
    ending = case["ending"]
    if case["state"] == "rolled_back":
        return f"rolled back at {ending['percent']:g} % ({ending['reason']})"
    if case["state"] == "done":
        return "done, promoted at every step"
    return str(case["state"])


def faults(case: Mapping[str, Any]) -> str:
    parts = [f"`error_rate` {v:.0%}" if k == "error_rate" else f"`{k}` {v:g}"
             for k, v in case["faults"].items()]
    if case["killed"]:
        parts.append(f"{case['killed']['gateway']} SIGKILLed at "
                     f"{case['killed']['t'] - case['rollout_started_s']:.1f} s")
    return ", ".join(parts) or "none"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def figures(side: Mapping[str, Any]) -> str:
    """A decision's figures for one version: requests, error rate, TTFT p50 / p99."""
    if not side:
        return "-"
    return (f"{side['requests']}, {side['error_rate']:.1%}, "
            f"{_ms(side['ttft_p50_s'])} / {_ms(side['ttft_p99_s'])} ms")


def driver(case: Mapping[str, Any]) -> str:
    if case["driven_by"] != case["started_by"]:
        return f"{case['driven_by']} (took over from {case['started_by']})"
    return str(case["driven_by"])


def markdown(result: Mapping[str, Any]) -> str:
    lines = ["| rollout | v2 fault | outcome | ended after the first step | ending decision "
             "| v2: requests, error rate, TTFT p50 / p99 | v1: same | requests v1 / v2 "
             "| failed on v2 | failed others | driven by |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, case in result["rollout"].items():
        ending, by_version = case["ending"], case["requests_by_version"]
        lines.append(
            f"| {name} | {faults(case)} | {case['state']} | {case['ended_after_s']:.2f} s | "
            f"{ending['action']} at {ending['percent']:g} %: {ending['reason']} | "
            f"{figures(ending['new'])} | {figures(ending['base'])} | "
            f"{by_version.get('v1', 0):,} / {by_version.get('v2', 0):,} | "
            f"{case['failed_on_canary']} | {case['failed_other']} | {driver(case)} |")
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


def plot(cases: Mapping[str, Mapping[str, Any]], hold_s: float, path: Path) -> None:
    """The timelines, one panel per case: the share of requests v2 answered and the
    share that failed, per second, with the rollout's decisions (and the driver's kill)
    marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 0.5 + 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 1, squeeze=False)[:, 0]
    for ax, case in zip(axes, cases.values(), strict=True):
        rows = case["per_second"]
        t = [r["t"] + 0.5 for r in rows]
        total = [max(1, r["v1"] + r["v2"] + r["other"]) for r in rows]
        ax.plot(t, [100 * r["v2"] / n for r, n in zip(rows, total, strict=True)],
                color="tab:blue", marker=".", label="share of requests on v2 (%)")
        ax.plot(t, [100 * r["errors"] / n for r, n in zip(rows, total, strict=True)],
                color="tab:red", marker=".", label="failed requests (%)")
        for d in case["decisions"]:
            if d["action"] in COLORS:
                ax.axvline(d["t"], color=COLORS[d["action"]], ls="--", alpha=0.6)
            if d["action"] in LABELLED:
                ax.annotate(f"{d['action']} {d['percent']:g}%", (d["t"], 102), fontsize=7,
                            rotation=90, va="bottom",
                            ha="right" if d["action"] == "step" else "left",
                            color=COLORS[d["action"]])
        if case["killed"]:
            ax.axvline(case["killed"]["t"], color="black", lw=1.5)
            ax.annotate("SIGKILL", (case["killed"]["t"], 102),
                        fontsize=7, rotation=90, va="bottom", ha="right")
        ax.set_ylim(-2, 150)
        ax.set_title(f"{case['label']} (hold {hold_s:g} s): {outcome(case)}, driven by "
                     f"{driver(case)}", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("%")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="center right")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
