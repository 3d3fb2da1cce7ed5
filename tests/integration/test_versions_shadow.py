"""Shadow mirroring through a gateway and two simulators: copies reach the shadow
version and are compared, never change the answer, and are bounded in flight."""

from __future__ import annotations

import time
from typing import Any

import httpx

from simulator import SimConfig
from tests.integration.helpers import gateway_metric, sim_received, wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY

FAST: dict[str, Any] = {"prefill_base_ms": 1, "decode_step_ms": 1}
SHADOW = 'sluice_shadow_requests_total{model="chat",outcome="%s",version="v2"}'


async def shadowed(start_sim, start_gateway, shadow: SimConfig, fraction: float,
                   **overrides: Any) -> tuple[str, list[str]]:
    """A gateway whose alias answers from v1 and mirrors ``fraction`` to v2."""
    sims = [await start_sim(SimConfig(model=MODELS["v1"], **FAST)), await start_sim(shadow)]
    gateway = await start_gateway(sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
                                  versions={"aliases": {"chat": {"versions": {
                                      name: {"model": m} for name, m in MODELS.items()}}},
                                      **overrides})
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=ADMIN) as http:
        response = await http.put("/admin/versions/chat", json={
            "weights": {"v1": 1}, "shadow": {"v2": fraction}})
    assert response.status_code == 200, response.text
    return gateway, sims


async def test_mirrored_requests_are_compared_and_never_answer(
        start_sim, start_gateway) -> None:
    gateway, sims = await shadowed(start_sim, start_gateway,
                                   SimConfig(model=MODELS["v2"], **FAST), 0.5)
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=KEY) as http:
        answers = [await http.post("/v1/chat/completions", json=BODY,
                                   headers={"x-request-id": f"shadow-{n}"})
                   for n in range(200)]

        async def compared() -> bool:
            mirrored = await sim_received(http, sims[1])
            ok = await gateway_metric(http, gateway, SHADOW % "ok")
            seen = await gateway_metric(http, gateway, "sluice_shadow_latency_ratio_count{")
            return ok == seen == mirrored > 0

        await wait_until(compared, "every mirrored request compared")
        mirrored = await sim_received(http, sims[1])
        diverged = await gateway_metric(http, gateway, "sluice_shadow_divergence_total{")
    assert all(a.status_code == 200 for a in answers)
    assert {(a.headers["x-sluice-version"], a.json()["model"]) for a in answers} == {
        ("v1", "sim-a")}
    print(f"shadow 50 %: {mirrored} of 200 mirrored")
    assert 70 <= mirrored <= 130
    assert diverged == 0


async def test_a_hung_shadow_delays_nothing_and_is_bounded(start_sim, start_gateway) -> None:
    gateway, _ = await shadowed(start_sim, start_gateway,
                                SimConfig(model=MODELS["v2"], hang=True, **FAST), 1.0,
                                shadow_max_in_flight=4)
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=KEY) as http:
        began = time.perf_counter()
        answers = [await http.post("/v1/chat/completions", json=BODY) for _ in range(10)]
        took = time.perf_counter() - began
        dropped = await gateway_metric(http, gateway, SHADOW % "dropped")
    print(f"10 requests with a hung shadow: {took * 1000:.0f} ms in all")
    assert all(a.status_code == 200 for a in answers)
    assert {a.headers["x-sluice-version"] for a in answers} == {"v1"}
    assert dropped == 6
