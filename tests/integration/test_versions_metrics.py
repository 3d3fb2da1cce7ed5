"""Every per-request metric carries ``model`` and ``version``, read from ``/metrics`` of a
gateway whose alias is served by simulators; the in-flight gauge comes back to 0 under
every label set, whatever way the requests end; engines name what they serve."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimConfig
from tests.integration.helpers import wait_until
from tests.integration.test_versions import KEY, MODELS, STATIC_KEY, versions

FAST = SimConfig(prefill_base_ms=1, decode_step_ms=2)
ASK = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
V1, V2 = {**KEY, "x-sluice-version": "v1"}, {**KEY, "x-sluice-version": "v2"}

Series = list[tuple[dict[str, str], float]]


async def series(http: httpx.AsyncClient, name: str) -> Series:
    """The samples called ``name`` on the gateway's ``/metrics``, with their labels."""
    page = (await http.get("/metrics", headers=KEY)).text
    return [(s.labels, s.value) for family in text_string_to_metric_families(page)
            for s in family.samples if s.name == name]


def by_version(found: Series, model: str = "chat") -> dict[str, float]:
    """``found``'s values of ``model`` summed by version."""
    totals: dict[str, float] = {}
    for labels, value in found:
        if labels["model"] == model:
            totals[labels["version"]] = totals.get(labels["version"], 0.0) + value
    return totals


async def fault(http: httpx.AsyncClient, sim: str, **faults: Any) -> None:
    response = await http.post(sim + "/sim/faults", json=faults)
    assert response.status_code == 200, response.text


async def test_each_request_metric_of_an_alias_request_names_its_version(
        start_sim, start_gateway) -> None:
    a = await start_sim(FAST.model_copy(update={"model": MODELS["v1"]}))
    b1, b2 = [await start_sim(FAST.model_copy(update={"model": MODELS["v2"]}))
              for _ in range(2)]
    gateway = await start_gateway(
        [a, b1, b2], api_keys=[STATIC_KEY], versions=versions({"v1": 1}),
        routing={"default": {"strategy": "round_robin"}},
        resilience={"backoff_base_s": 0.0, "retry_budget_ratio": 0.0,
                    "retry_budget_min_per_s": 0.1,  # one retry per 10 s window
                    "breaker": {"failure_threshold": 100}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert (await http.post("/v1/chat/completions", json=ASK, headers=V1)).status_code == 200
        streamed = await http.post("/v1/chat/completions", json={**ASK, "stream": True},
                                   headers=V2)
        assert streamed.status_code == 200
        greedy = {**ASK, "temperature": 0}
        for _ in range(2):  # a miss, then a hit
            assert (await http.post("/v1/chat/completions", json=greedy,
                                    headers=V1)).headers["x-sluice-version"] == "v1"
        await fault(http, b1, error_rate=1.0)  # round robin: every other v2 request tries
        for _ in range(10):                    # b1 first: a retry, then none (budget)
            await http.post("/v1/chat/completions", json=ASK, headers=V2)
            if by_version(await series(http, "sluice_retry_budget_exhausted_total")):
                break
        await fault(http, b1, error_rate=0.0)
        for sim in (b1, b2):  # both v2 engines die 3 tokens into the next stream
            delivered = (await http.get(sim + "/sim/faults")).json()["tokens_delivered"]
            await fault(http, sim, crash_after_tokens=delivered + 3)
        broken = await http.post("/v1/chat/completions",
                                 json={**ASK, "stream": True, "max_tokens": 20}, headers=V2)
        assert broken.status_code == 200
        assert '"error"' in broken.text

        seen = {name: by_version(await series(http, name)) for name in (
            "sluice_requests_total", "sluice_tokens_total",
            "sluice_time_to_first_token_seconds_count",
            "sluice_inter_token_latency_seconds_count",
            "sluice_request_duration_seconds_count", "sluice_retries_total",
            "sluice_retry_budget_exhausted_total", "sluice_routing_decisions_total",
            "sluice_failovers_total", "sluice_cache_lookups_total")}
        key_requests = await series(http, "sluice_key_requests_total")
        key_tokens = await series(http, "sluice_key_tokens_total")
        in_flight = by_version(await series(http, "sluice_requests_in_flight"))
        info = {(labels["engine"], labels["model"], labels["version"])
                for labels, value in await series(http, "sluice_engine_info") if value == 1}
    for name in ("sluice_requests_total", "sluice_tokens_total",
                 "sluice_request_duration_seconds_count", "sluice_routing_decisions_total"):
        assert seen[name].keys() == {"v1", "v2"}, name
        assert all(seen[name].values()), name
    assert seen["sluice_time_to_first_token_seconds_count"].keys() == {"v2"}
    assert seen["sluice_inter_token_latency_seconds_count"]["v2"] > 0
    assert seen["sluice_cache_lookups_total"] == {"v1": 2}
    assert seen["sluice_retries_total"] == {"v2": 1}
    assert seen["sluice_retry_budget_exhausted_total"].keys() == {"v2"}
    assert seen["sluice_failovers_total"].keys() == {"v2"}
    assert by_version(key_requests) == seen["sluice_requests_total"]
    assert {labels["key_id"] for labels, _ in key_requests + key_tokens} == {"static-0"}
    assert by_version(key_tokens).keys() == {"v1", "v2"}
    assert in_flight == {"v1": 0, "v2": 0}
    assert {("e0", "chat", "v1"), ("e1", "chat", "v2"), ("e2", "chat", "v2"),
            ("e0", "sim-a", "none"), ("e1", "sim-b", "none")} <= info
    assert not {i for i in info if i[0] == "e0" and i[2] == "v2"}


async def test_in_flight_returns_to_zero_under_each_version_however_requests_end(
        start_sim, start_gateway) -> None:
    a = await start_sim(SimConfig(model=MODELS["v1"], prefill_base_ms=1, decode_step_ms=5))
    b = await start_sim(FAST.model_copy(update={"model": MODELS["v2"]}))
    gateway = await start_gateway([a, b], api_keys=[STATIC_KEY], versions=versions({"v1": 1}),
                                  admission={"models": {MODELS["v1"]: 1}})
    long = {**ASK, "max_tokens": 1000}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        async def in_flight() -> dict[str, float]:
            return by_version(await series(http, "sluice_requests_in_flight"))

        statuses = [(await http.post("/v1/chat/completions", json=ASK, headers=V1)).status_code,
                    (await http.post("/v1/chat/completions", json={**ASK, "stream": True},
                                     headers=V2)).status_code,
                    (await http.post("/v1/chat/completions", json=ASK, headers={
                        **KEY, "x-sluice-version": "v9"})).status_code]
        await fault(http, b, error_rate=1.0)
        statuses.append((await http.post("/v1/chat/completions", json=ASK,
                                          headers=V2)).status_code)
        await fault(http, b, error_rate=0.0)
        async with http.stream("POST", "/v1/chat/completions", json={**long, "stream": True},
                               headers=V1) as stream:
            assert stream.status_code == 200
            chunks = stream.aiter_bytes()  # (held: a dropped iterator closes the stream)
            await anext(chunks)
            during = await in_flight()
            refused = await http.post("/v1/chat/completions", json=ASK, headers=V1)
        # the client left the stream; the books close on the gateway's side

        async def idle() -> bool:
            return set((await in_flight()).values()) == {0}
        await wait_until(idle, "the stream's in-flight count to be lowered")
        # a non-streamed request the client gives up on
        with contextlib.suppress(httpx.TimeoutException):
            await http.post("/v1/chat/completions", json=long, headers=V1, timeout=0.3)

        async def both_left() -> bool:
            requests = await series(http, "sluice_requests_total")
            left = sum(v for labels, v in requests if labels["status"] == "499"
                       and labels["version"] == "v1")
            return left == 2 and await idle()
        await wait_until(both_left, "the cancelled requests to be counted")
        after = await in_flight()
        disconnects = by_version(await series(http, "sluice_client_disconnects_total"))
        rejections = by_version(await series(http, "sluice_admission_rejections_total"))
    assert statuses[:3] == [200, 200, 400]
    assert statuses[3] >= 500
    assert refused.status_code == 429
    assert during == {"v1": 1, "v2": 0}
    assert after == {"v1": 0, "v2": 0}
    assert disconnects == {"v1": 2}
    assert rejections == {"v1": 1}
