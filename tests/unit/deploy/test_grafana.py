"""deploy/grafana: every dashboard names the provisioned datasource, and every metric its
panels query is one the gateway's registry or vLLM's source declares."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.helpers import DEPLOY, declared, gateway_metric_names, vllm_metric_names

DASHBOARDS = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
# What PromQL queries here use besides metric names: functions, aggregations, keywords.
PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "rate",
    "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "ceil", "floor", "round", "vector", "scalar", "time", "absent",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "label_replace",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
})
GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = GRAFANA_VARIABLE.sub("1m", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w.lower() not in PROMQL_WORDS}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return gateway_metric_names() | vllm_metric_names()


def provisioned_uids() -> set[str]:
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    return {source["uid"] for source in sources["datasources"]}


def test_dashboards_are_found() -> None:
    assert DASHBOARDS


def test_the_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, engine) (rate('
            'sluice_adapter_load_seconds_bucket{engine=~"a|b"}[$__rate_interval]))) '
            '/ on (engine) max(vllm:num_requests_waiting)')
    assert metric_names(expr) == {"sluice_adapter_load_seconds_bucket",
                                  "vllm:num_requests_waiting"}


def test_both_sources_of_metric_names_are_read(known_metrics: set[str]) -> None:
    assert "sluice_requests" in known_metrics
    assert "vllm:num_requests_waiting" in known_metrics


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_known_metrics(path: Path, known_metrics: set[str]) -> None:
    dashboard = json.loads(path.read_text())
    uids = provisioned_uids()
    queried = 0
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        assert panel["datasource"]["uid"] in uids, f"{title}: datasource not provisioned"
        assert panel.get("targets"), f"{title}: no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] in uids
            names = metric_names(target["expr"])
            assert names, f"{title}: {target['expr']} reads no metric"
            unknown = {n for n in names if not declared(n, known_metrics)}
            assert not unknown, f"{title}: no such metric {sorted(unknown)}"
            queried += 1
    assert queried


def test_dashboards_cover_what_operators_watch() -> None:
    titles = " | ".join(p.get("title", "") for d in DASHBOARDS
                        for p in panels(json.loads(d.read_text()))).lower()
    for topic in ("time to first token", "inter-token", "tokens per second", "queue depth",
                  "kv cache", "cache hit rate", "per version", "circuit", "failover",
                  "admission", "429", "adapter loads"):
        assert topic in titles, f"no panel about {topic}"
