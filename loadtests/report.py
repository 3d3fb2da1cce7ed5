"""Result files, Markdown tables and A/B comparisons of load-test runs.

Result file schema ``sluice.bench/v1``
--------------------------------------
A file holds one JSON object. A **run document** describes one run of one scenario
against one target::

    {
      "schema": "sluice.bench/v1",
      "target": "gateway",              # short name of what was measured
      "base_url": "http://127.0.0.1:8080",
      "scenario": {...},                # the scenario as run (workload, arrival, seed, ...)
      "started_at": "2025-01-01T00:00:00+00:00",   # ISO 8601 UTC
      "duration_s": 60.0,               # first send to last response end
      "level": 8.0,                     # swept rate or concurrency; null outside a sweep
      "summary": {                      # loadtests.metrics.Summary
        "completed": 480, "failed": 2, "errors_by_type": {"http_429": 2},
        "duration_s": 60.0, "request_throughput": 8.0, "output_throughput": 1024.0,
        "total_token_throughput": 5120.0, "total_input_tokens": 245760,
        "total_output_tokens": 61440,
        "goodput": 7.5,                 # req/s meeting every SLO; null without SLOs
        "slo": {"ttft_ms": 500.0, "tpot_ms": 50.0, "e2el_ms": null},   # or null
        "ttft_ms": {"mean": .., "median": .., "std": .., "min": .., "max": ..,
                    "percentiles": {"p50": .., "p90": .., "p95": .., "p99": ..}},
        "tpot_ms": {...}, "itl_ms": {...}, "e2el_ms": {...}
      },
      "series": [{"t": 1.0, "source": "http://engine:8000", "name": "vllm:...",
                  "value": 3.0}, ...],  # scraped /metrics samples (may be empty)
      "records": [{"index": 0, "start": 0.0, "chunk_times": [..], "end": 0.9,
                   "prompt_tokens": 512, "completion_tokens": 128, "error": null,
                   "model": "m", "session": null, "turn": null}, ...]
                                        # only when written with include_records=True
    }

A **collection** holds several runs: one sweep (same target, several levels), several
targets side by side (same level), or both (a sweep per target)::

    {"schema": "sluice.bench/v1", "runs": [<run document>, ...]}

Each run is told apart by its ``target`` and ``level``; every run document keeps its own
``schema`` tag so it stays a valid file on its own. Times are seconds relative to the
run's start unless named ``_ms``. JSON has no infinity: a non-finite number (such as an
unbounded request rate in ``level`` or ``scenario``) is written as the string ``"inf"``,
``"-inf"`` or ``"nan"``. Fields are only ever added within ``v1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests.metrics import Distribution, Summary
from loadtests.records import RequestRecord, RunResult

SCHEMA = "sluice.bench/v1"

Document = dict[str, Any]
Documents = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""A run document, a collection, or a list of either."""


def run_document(result: RunResult, summary: Summary, *, include_records: bool = False) -> Document:
    """The run document of one run (see the module docstring)."""
    doc: Document = {
        "schema": SCHEMA,
        "target": result.target,
        "base_url": result.base_url,
        "scenario": result.scenario,
        "started_at": result.started_at,
        "duration_s": result.duration_s,
        "level": result.level,
        "summary": summary.model_dump(mode="json"),
        "series": [asdict(sample) for sample in result.series],
    }
    if include_records:
        doc["records"] = [asdict(record) for record in result.records]
    safe: Document = _json_safe(doc)
    return safe


def write_json(
    result: RunResult, summary: Summary, path: str | Path, *, include_records: bool
) -> Path:
    """Write one run document to ``path`` (parent folders are created)."""
    return _write(run_document(result, summary, include_records=include_records), path)


def write_runs_json(
    runs: Sequence[tuple[RunResult, Summary]], path: str | Path, *, include_records: bool
) -> Path:
    """Write a collection (a sweep, several targets, or both) to ``path``."""
    docs = [run_document(r, s, include_records=include_records) for r, s in runs]
    return _write({"schema": SCHEMA, "runs": docs}, path)


def load_json(path: str | Path) -> Document:
    """Read a result file; ValueError unless it (and every run in it) is ``sluice.bench/v1``."""
    doc = json.loads(Path(path).read_text())
    _check_schema(doc, str(path))
    for i, run in enumerate(doc.get("runs", [])):
        _check_schema(run, f"{path} runs[{i}]")
    return dict(doc)


def run_documents(docs: Documents) -> list[Mapping[str, Any]]:
    """Flatten run documents, collections and lists of them into run documents."""
    items = [docs] if isinstance(docs, Mapping) else list(docs)
    runs: list[Mapping[str, Any]] = []
    for item in items:
        runs.extend(item.get("runs", [item]))
    return runs


def summary_of(run: Mapping[str, Any]) -> Summary:
    """The validated summary of a run document."""
    return Summary.model_validate(run["summary"])


def records_of(run: Mapping[str, Any]) -> list[RequestRecord] | None:
    """The request records of a run document; None when they were not written."""
    if "records" not in run:
        return None
    return [RequestRecord(**record) for record in run["records"]]


def run_label(run: Mapping[str, Any]) -> str:
    """``target`` or ``target @ level``: how tables and plots name a run."""
    level = run.get("level")
    return str(run["target"]) if level is None else f"{run['target']} @ {format_level(level)}"


def format_level(level: float | str | None) -> str:
    """A sweep level for display: 8.0 -> ``8``, ``"inf"`` stays, None -> ``-``."""
    if level is None:
        return "-"
    return level if isinstance(level, str) else f"{level:g}"


def markdown(docs: Documents) -> str:
    """A Markdown report: one summary row per run, then errors by type.

    Latency cells are ``median / p99`` in milliseconds (``-`` when p99 was not computed).
    """
    runs = run_documents(docs)
    summaries = [summary_of(run) for run in runs]
    with_goodput = any(s.goodput is not None for s in summaries)
    header = [
        "Target",
        "Level",
        "OK / failed",
        "req/s",
        "out tok/s",
        "TTFT p50 / p99 (ms)",
        "TPOT p50 / p99 (ms)",
        "ITL p50 / p99 (ms)",
        "E2EL p50 / p99 (ms)",
    ] + (["Goodput (req/s)"] if with_goodput else [])
    lines = [_row(header), _row(["---"] * len(header))]
    for run, s in zip(runs, summaries, strict=True):
        cells = [
            str(run["target"]),
            format_level(run.get("level")),
            f"{s.completed} / {s.failed}",
            f"{s.request_throughput:.2f}",
            f"{s.output_throughput:.2f}",
            *(_median_p99(d) for d in (s.ttft_ms, s.tpot_ms, s.itl_ms, s.e2el_ms)),
        ]
        if with_goodput:
            cells.append("-" if s.goodput is None else f"{s.goodput:.2f}")
        lines.append(_row(cells))
    slos = sorted({s.slo.spec() for s in summaries if s.slo is not None})
    if slos:
        lines += ["", "Goodput SLOs: " + "; ".join(f"`{spec}`" for spec in slos)]
    lines += ["", "### Errors by type", ""]
    errors = [
        (run, kind, count)
        for run, s in zip(runs, summaries, strict=True)
        for kind, count in s.errors_by_type.items()
    ]
    if not errors:
        return "\n".join([*lines, "No failed requests.", ""])
    lines += [_row(["Target", "Level", "Error", "Count"]), _row(["---"] * 4)]
    for run, kind, count in errors:
        lines.append(_row([str(run["target"]), format_level(run.get("level")), kind, str(count)]))
    return "\n".join([*lines, ""])


_COMPARED: tuple[tuple[str, str, str], ...] = (
    ("completed", "completed", ""),
    ("failed", "failed", ""),
    ("request_throughput", "req/s", ""),
    ("output_throughput", "output tok/s", ""),
    ("goodput", "goodput req/s", ""),
    ("ttft_ms", "TTFT median (ms)", "median"),
    ("ttft_ms", "TTFT p99 (ms)", "p99"),
    ("tpot_ms", "TPOT median (ms)", "median"),
    ("tpot_ms", "TPOT p99 (ms)", "p99"),
    ("itl_ms", "ITL median (ms)", "median"),
    ("itl_ms", "ITL p99 (ms)", "p99"),
    ("e2el_ms", "E2EL median (ms)", "median"),
    ("e2el_ms", "E2EL p99 (ms)", "p99"),
)


def compare(a_path: str | Path, b_path: str | Path) -> str:
    """Markdown tables of the key metrics of two result files and B's change vs A (%).

    Two single runs are compared directly; otherwise runs are paired by target and level,
    and runs found in one file only are listed.
    """
    a_runs, b_runs = run_documents(load_json(a_path)), run_documents(load_json(b_path))
    if len(a_runs) == 1 and len(b_runs) == 1:
        pairs = [(a_runs[0], b_runs[0])]
    else:
        b_by_key = {_key(run): run for run in b_runs}
        pairs = [(a, b_by_key[_key(a)]) for a in a_runs if _key(a) in b_by_key]
    lines = [f"A: `{a_path}`", f"B: `{b_path}`"]
    for a, b in pairs:
        lines += ["", f"### {run_label(a)} vs {run_label(b)}", ""]
        lines += [_row(["Metric", "A", "B", "Change"]), _row(["---"] * 4)]
        sa, sb = summary_of(a), summary_of(b)
        for field, name, stat in _COMPARED:
            va, vb = summary_value(sa, field, stat), summary_value(sb, field, stat)
            lines.append(_row([name, _num(va, field), _num(vb, field), _change(va, vb)]))
    paired = {_key(a) for a, _ in pairs} | {_key(b) for _, b in pairs}
    unpaired = [run_label(run) for run in [*a_runs, *b_runs] if _key(run) not in paired]
    if unpaired:
        lines += ["", "In one file only: " + ", ".join(unpaired)]
    return "\n".join([*lines, ""])


def summary_value(summary: Summary, field: str, stat: str = "") -> float | None:
    """One number of a summary: a scalar ``field`` (``"output_throughput"``), or ``stat``
    (``"median"``, ``"p99"``, ...) of a latency ``field`` (``"ttft_ms"``). None if absent."""
    value = getattr(summary, field)
    if isinstance(value, Distribution):
        return value.median if stat == "median" else value.percentiles.get(stat)
    return None if value is None else float(value)


def _change(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{(b - a) / a * 100:+.1f}%"


def _num(value: float | None, field: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if field in ("completed", "failed") else f"{value:.2f}"


def _key(run: Mapping[str, Any]) -> tuple[str, str]:
    return str(run["target"]), format_level(run.get("level"))


def _median_p99(dist: Distribution) -> str:
    p99 = dist.percentiles.get("p99")
    return f"{dist.median:.2f} / " + ("-" if p99 is None else f"{p99:.2f}")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _check_schema(doc: Any, where: str) -> None:
    tag = doc.get("schema") if isinstance(doc, dict) else None
    if tag != SCHEMA:
        raise ValueError(f"{where}: not a {SCHEMA} result (schema tag {tag!r})")


def _write(doc: Document, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return out


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (anywhere) by ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
