"""Per-plugin timing: observed in a histogram when ``routing.plugin_timing`` is on."""

from __future__ import annotations

import pytest

from gateway.core.errors import NoHealthyEngine
from tests.unit.scheduling.fakes import Engine, Harness, request

TEXT = "a prompt long enough for several blocks of eight characters"


def count(h: Harness, plugin: str, kind: str) -> float | None:
    return h.metrics.registry.get_sample_value(
        "sluice_scheduler_plugin_duration_seconds_count", {"plugin": plugin, "kind": kind})


def test_each_plugin_call_is_observed_when_on() -> None:
    h = Harness(default={"strategy": "prefix"}, plugin_timing=True)
    engines = [Engine("a"), Engine("b")]
    for _ in range(2):
        h.pick(engines, TEXT)
    for plugin, kind in [("serves_model", "filter"), ("healthy", "filter"),
                         ("circuit", "filter"), ("not_tried", "filter"),
                         ("prefix", "scorer"), ("least_loaded", "scorer"),
                         ("max_score", "picker"), ("prefix", "observer")]:
        assert count(h, plugin, kind) == 2, (plugin, kind)


def test_timing_still_lets_errors_through_and_is_off_by_default() -> None:
    h = Harness(default={"strategy": "least_loaded"}, plugin_timing=True)
    ctx = request(tried={"a"})
    with pytest.raises(NoHealthyEngine):
        h.scheduler.schedule(ctx, [Engine("a")])
    assert count(h, "not_tried", "filter") == 1
    off = Harness(default={"strategy": "least_loaded"})
    off.pick([Engine("a"), Engine("b")])
    assert count(off, "least_loaded", "scorer") is None
