"""Result files, Markdown, plots and comparisons, on small runs with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.metrics import Slo, summarize
from loadtests.plots import write_plots
from loadtests.records import MetricSample, RequestRecord, RunResult
from loadtests.report import (
    SCHEMA,
    compare,
    load_json,
    markdown,
    records_of,
    run_document,
    run_documents,
    summary_of,
    write_json,
    write_runs_json,
)


def run(target: str = "gateway", level: float | None = None, scale: float = 1.0) -> RunResult:
    """Two successes and one http_503 over 2 s (times multiplied by ``scale``).

    At scale 1: TTFT, TPOT and ITL are each [125, 250] ms (median 187.5, p99 248.75),
    E2EL [250, 500] (median 375, p99 497.5), 1 req/s, 2 output tok/s.
    """
    records = [
        RequestRecord(0, 0.0, [0.125 * scale, 0.25 * scale], 0.25 * scale, 4, 2, model="m"),
        RequestRecord(1, 0.5 * scale, [0.75 * scale, 1.0 * scale], 1.0 * scale, 4, 2),
        RequestRecord(2, 1.0 * scale, [], 1.125 * scale, error="http_503"),
    ]
    series = [MetricSample(0.0, "http://e0", "vllm:num_requests_running", 1.0)]
    scenario = {"workload": "fixed", "rate": float("inf"), "seed": 7}
    return RunResult(
        target, f"http://{target}", scenario, "2025-01-01T00:00:00+00:00", 2.0 * scale,
        records, series, level,
    )  # fmt: skip


ROW = (
    "| gateway | - | 2 / 1 | 1.00 | 2.00 | 187.50 / 248.75 | 187.50 / 248.75 "
    "| 187.50 / 248.75 | 375.00 / 497.50 |"
)


def test_json_round_trip_with_records(tmp_path: Path) -> None:
    result = run()
    summary = summarize(result, slos=Slo(ttft_ms=200))
    path = write_json(result, summary, tmp_path / "out" / "run.json", include_records=True)
    doc = load_json(path)
    assert list(doc) == [
        "schema", "target", "base_url", "scenario", "started_at", "duration_s", "level",
        "summary", "series", "records",
    ]  # fmt: skip
    assert doc["schema"] == SCHEMA == "sluice.bench/v1"
    assert (doc["target"], doc["base_url"], doc["duration_s"], doc["level"]) == (
        "gateway", "http://gateway", 2.0, None,
    )  # fmt: skip
    assert doc["scenario"] == {"workload": "fixed", "rate": "inf", "seed": 7}
    assert doc["series"] == [
        {"t": 0.0, "source": "http://e0", "name": "vllm:num_requests_running", "value": 1.0}
    ]
    assert doc["summary"]["ttft_ms"]["percentiles"]["p99"] == 248.75
    assert doc["summary"]["slo"] == {"ttft_ms": 200.0, "tpot_ms": None, "e2el_ms": None}
    assert summary_of(doc) == summary
    assert records_of(doc) == result.records


def test_json_without_records(tmp_path: Path) -> None:
    result = run(level=4.0)
    path = write_json(result, summarize(result), tmp_path / "run.json", include_records=False)
    doc = load_json(path)
    assert "records" not in doc
    assert records_of(doc) is None
    assert doc["level"] == 4.0
    assert summary_of(doc).goodput is None


def test_collection_holds_a_sweep_per_target(tmp_path: Path) -> None:
    results = [run(target, level) for target in ("gateway", "direct") for level in (1.0, 2.0)]
    path = write_runs_json(
        [(r, summarize(r)) for r in results], tmp_path / "sweep.json", include_records=False
    )
    doc = load_json(path)
    assert list(doc) == ["schema", "runs"]
    runs = run_documents(doc)
    assert [(r["target"], r["level"]) for r in runs] == [
        ("gateway", 1.0), ("gateway", 2.0), ("direct", 1.0), ("direct", 2.0),
    ]  # fmt: skip
    assert all(r["schema"] == SCHEMA for r in runs)


@pytest.mark.parametrize(
    "content",
    [
        {"target": "x"},
        {"schema": "sluice.bench/v0", "target": "x"},
        {"schema": SCHEMA, "runs": [{"schema": "other"}]},
        ["not", "an", "object"],
    ],
)
def test_load_json_refuses_other_schemas(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"not a sluice\.bench/v1 result"):
        load_json(path)


def test_markdown_rows_and_errors(tmp_path: Path) -> None:
    result = run()
    doc = load_json(
        write_json(result, summarize(result), tmp_path / "a.json", include_records=False)
    )
    text = markdown(doc)
    lines = text.splitlines()
    assert lines[0].startswith("| Target | Level | OK / failed | req/s | out tok/s |")
    assert "Goodput" not in text
    assert lines[2] == ROW
    assert "| gateway | - | http_503 | 1 |" in lines


def test_markdown_goodput_column_levels_and_no_errors() -> None:
    clean = run(level=float("inf"))
    clean.records = clean.records[:2]
    slo = Slo(ttft_ms=200, tpot_ms=300)
    docs = [
        run_document(clean, summarize(clean, slos=slo)),
        run_document(run("direct", 2.0), summarize(run("direct", 2.0))),
    ]
    lines = markdown(docs).splitlines()
    assert lines[0].endswith("| Goodput (req/s) |")
    assert lines[2].startswith("| gateway | inf | 2 / 0 | 1.00 | 2.00 |")
    assert lines[2].endswith("| 375.00 / 497.50 | 0.50 |")  # only the 125 ms TTFT is good
    assert lines[3].startswith("| direct | 2 | 2 / 1 |")
    assert lines[3].endswith("| - |")
    assert "Goodput SLOs: `ttft:200 tpot:300`" in lines
    assert "| direct | 2 | http_503 | 1 |" in lines


def test_markdown_says_when_nothing_failed() -> None:
    clean = run()
    clean.records = clean.records[:2]
    assert "No failed requests." in markdown(run_document(clean, summarize(clean)))


def _assert_pngs(paths: list[Path], names: set[str]) -> None:
    assert {p.name for p in paths} == names
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 5000


def test_plots_for_one_run(tmp_path: Path) -> None:
    paths = write_plots(run(), tmp_path / "plots")
    _assert_pngs(paths, {"latency_cdf.png", "latency_over_time.png"})


def test_plots_for_sweeps_of_two_targets(tmp_path: Path) -> None:
    results = [
        run(target, level, scale)
        for target, scale in (("gateway", 1.0), ("direct", 0.5))
        for level in (1.0, 2.0, float("inf"))
    ]
    paths = write_plots(results, tmp_path)
    _assert_pngs(paths, {"latency_cdf.png", "latency_over_time.png", "sweep.png", "targets.png"})


def test_plots_from_documents_without_records(tmp_path: Path) -> None:
    results = [run("gateway", 1.0), run("gateway", 2.0), run("direct", 1.0)]
    path = write_runs_json(
        [(r, summarize(r)) for r in results], tmp_path / "runs.json", include_records=False
    )
    paths = write_plots(load_json(path), tmp_path / "plots")
    _assert_pngs(paths, {"sweep.png", "targets.png"})


def test_compare_two_runs(tmp_path: Path) -> None:
    a, b = run(), run(scale=0.5)  # B: every time halved
    a_path = write_json(a, summarize(a), tmp_path / "a.json", include_records=False)
    b_path = write_json(b, summarize(b), tmp_path / "b.json", include_records=False)
    lines = compare(a_path, b_path).splitlines()
    assert "| output tok/s | 2.00 | 4.00 | +100.0% |" in lines
    assert "| req/s | 1.00 | 2.00 | +100.0% |" in lines
    assert "| TTFT median (ms) | 187.50 | 93.75 | -50.0% |" in lines
    assert "| E2EL p99 (ms) | 497.50 | 248.75 | -50.0% |" in lines
    assert "| E2EL median (ms) | 375.00 | 187.50 | -50.0% |" in lines
    assert "| failed | 1 | 1 | +0.0% |" in lines
    assert "| goodput req/s | - | - | - |" in lines


def test_compare_pairs_sweeps_by_target_and_level(tmp_path: Path) -> None:
    def save(name: str, results: list[RunResult]) -> Path:
        pairs = [(r, summarize(r)) for r in results]
        return write_runs_json(pairs, tmp_path / name, include_records=False)

    a_path = save("a.json", [run("gw", 1.0), run("gw", 2.0)])
    b_path = save("b.json", [run("gw", 2.0, scale=0.5), run("gw", 4.0)])
    text = compare(a_path, b_path)
    assert "### gw @ 2 vs gw @ 2" in text
    assert "### gw @ 1" not in text
    assert "| output tok/s | 2.00 | 4.00 | +100.0% |" in text.splitlines()
    assert "In one file only: gw @ 1, gw @ 4" in text
