"""The LoRA placement benchmark's pure parts: Zipf popularity, the requests it draws, the
gateway configs of its policies, the counters it reads and the checks it makes."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.config.settings import Settings
from loadtests.lora_bench import ADAPTERS, gateway_settings, scenario
from loadtests.lora_report import (
    Counts,
    Row,
    adapter_names,
    counts,
    gateway_counts,
    problems,
    zipf_weights,
)
from loadtests.workloads import RequestSource

PAGE = """\
# TYPE sluice_adapter_loads_total counter
sluice_adapter_loads_total{engine="engine-0",outcome="loaded"} 5.0
sluice_adapter_loads_total{engine="engine-1",outcome="loaded"} 3.0
sluice_adapter_loads_total{engine="engine-1",outcome="failed"} 1.0
# TYPE sluice_adapter_unloads_total counter
sluice_adapter_unloads_total{engine="engine-0"} 4.0
# TYPE sluice_adapter_load_seconds histogram
sluice_adapter_load_seconds_bucket{engine="engine-0",le="+Inf"} 8.0
sluice_adapter_load_seconds_sum{engine="engine-0"} 0.16
sluice_adapter_load_seconds_count{engine="engine-0"} 8.0
"""


def test_zipf_weights_fall_as_a_power_of_the_rank_and_sum_to_one() -> None:
    weights = zipf_weights(16, 1.1)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] / weights[1] == pytest.approx(2**1.1)
    assert weights[0] / weights[15] == pytest.approx(16**1.1)
    assert zipf_weights(3, 0) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="at least 1"):
        zipf_weights(0, 1.1)


def test_the_requests_name_adapters_by_popularity_the_same_for_a_seed() -> None:
    def models(seed: int) -> list[str]:
        source = RequestSource(scenario(4000, 10, seed).workload, seed)
        taken = [source.take() for _ in range(4000)]
        return [request.model for request in taken if request is not None]

    drawn = models(0)
    assert drawn == models(0)
    assert drawn != models(1)
    seen = Counter(drawn)
    assert set(seen) <= set(adapter_names(ADAPTERS))
    assert seen.most_common(1)[0][0] == "lora-00"
    assert seen["lora-00"] / len(drawn) == pytest.approx(zipf_weights(ADAPTERS, 1.1)[0],
                                                          abs=0.03)
    assert seen["lora-00"] > seen["lora-03"] > seen["lora-15"]


def test_each_policy_is_a_valid_gateway_config() -> None:
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    affinity, least, rand = (Settings.model_validate(gateway_settings(urls, policy, 3))
                             for policy in ("lora_affinity", "least_loaded", "random"))
    assert len(affinity.adapters) == ADAPTERS
    assert [e.lora_bound for e in affinity.engines] == [2, 2]
    assert affinity.lora.affinity_weight == 2
    assert (least.lora.affinity_weight, rand.lora.affinity_weight) == (0, 0)
    assert affinity.routing.default.strategy == least.routing.default.strategy == "least_loaded"
    profile = rand.routing.profiles[rand.routing.default.profile or ""]
    assert [(s.type, s.params) for s in profile.scorers] == [("random", {"seed": 3})]


def test_counts_sum_the_gateway_and_the_engines() -> None:
    assert gateway_counts(PAGE) == {"loads": 8, "failed_loads": 1, "unloads": 4,
                                    "load_seconds_sum": 0.16, "load_seconds_count": 8}
    sims = [{"loaded": ["a"], "loads": 5, "unloads": 4},
            {"loaded": [], "loads": 3, "already_loaded": 1, "unloaded_busy": 2}]
    now = counts(PAGE, sims)
    assert (now.sim_loads, now.sim_unloads, now.already_loaded, now.unloaded_busy) == (
        8, 4, 1, 2)
    assert now - Counts(loads=2, sim_loads=2) == Counts(
        loads=6, failed_loads=1, unloads=4, load_seconds_sum=0.16, load_seconds_count=8,
        sim_loads=6, sim_unloads=4, already_loaded=1, unloaded_busy=2)


def row(**changes: object) -> Row:
    fields: dict[str, object] = {
        "policy": "p", "requests": 2000, "completed": 2000, "failed": 0, "loads": 300,
        "sim_loads": 300, "failed_loads": 0, "unloads": 290, "sim_unloads": 290,
        "already_loaded": 0, "unloaded_busy": 0, "mean_load_ms": 20.0, "ttft_p50_ms": 1.0,
        "ttft_p99_ms": 2.0, "e2el_p50_ms": 3.0, "request_throughput": 10.0}
    return Row(**{**fields, **changes})  # type: ignore[arg-type]


def test_loads_per_thousand_requests() -> None:
    assert row().loads_per_1k == 150.0
    assert row(requests=0).loads_per_1k == 0.0


def test_problems_name_every_call_that_must_not_happen() -> None:
    assert problems(row()) == []
    found = problems(row(failed=2, failed_loads=1, already_loaded=1, unloaded_busy=3,
                         sim_loads=299))
    assert len(found) == 5
    assert "the gateway counted 300 loads and 290 unloads, the engines 299 and 290" in found[-1]
