"""Shadow mirroring through a gateway and two simulators: copies reach the shadow
version and are compared (status, tokens, text), never change the answer, and are
bounded in flight."""

from __future__ import annotations

import time
from typing import Any

import httpx

from simulator import SimConfig
from tests.integration.helpers import gateway_metric, sim_received, wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, BODY, KEY, MODELS, STATIC_KEY

FAST: dict[str, Any] = {"prefill_base_ms": 1, "decode_step_ms": 1}
SHADOW = 'sluice_shadow_requests_total{model="chat",outcome="%s",version="v2"}'
DIVERGED = 'sluice_shadow_divergence_total{model="chat",reason="%s",version="v2"}'
SIMILARITY = 'sluice_shadow_text_similarity_%s{model="chat",version="v2"}'


async def shadowed(start_sim, start_gateway, shadow: SimConfig, fraction: float,
                   models: dict[str, str] = MODELS, **overrides: Any) -> tuple[str, list[str]]:
    """A gateway whose alias answers from v1 and mirrors ``fraction`` to v2."""
    sims = [await start_sim(SimConfig(model=models["v1"], **FAST)), await start_sim(shadow)]
    gateway = await start_gateway(sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
                                  versions={"aliases": {"chat": {"versions": {
                                      name: {"model": m} for name, m in models.items()}}},
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
        diverged = [await gateway_metric(http, gateway, DIVERGED % reason)
                    for reason in ("status", "tokens")]
    assert all(a.status_code == 200 for a in answers)
    assert {(a.headers["x-sluice-version"], a.json()["model"]) for a in answers} == {
        ("v1", "sim-a")}
    print(f"shadow 50 %: {mirrored} of 200 mirrored")
    assert 70 <= mirrored <= 130
    assert diverged == [0, 0]  # (the texts differ: sim-b's words are not sim-a's)


async def mirror_mixed(gateway: str) -> tuple[list[str], dict[str, float]]:
    """12 requests, each mirrored (chat and completions, streamed and not, 16 tokens);
    the texts the client got, and the shadow metrics once every copy was compared."""
    chat = {**BODY, "max_tokens": 16}
    completion = {"model": "chat", "prompt": "once upon a time", "max_tokens": 16}
    texts: list[str] = []
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=KEY) as http:
        for n in range(12):
            path, body = (("/v1/chat/completions", chat) if n % 4 < 2
                          else ("/v1/completions", completion))
            answer = await http.post(path, json={**body, "stream": n % 2 == 1})
            assert answer.status_code == 200, answer.text
            texts.append(answer.text)

        async def compared() -> bool:
            return await gateway_metric(http, gateway, SIMILARITY % "count") == 12
        await wait_until(compared, "every mirrored request compared")
        seen = {name: await gateway_metric(http, gateway, metric) for name, metric in (
            ("ok", SHADOW % "ok"), ("sum", SIMILARITY % "sum"),
            ("at_most_0.9", SIMILARITY.replace("{", "{le=\"0.9\",") % "bucket"),
            *((reason, DIVERGED % reason) for reason in ("status", "tokens", "text")))}
    return texts, seen


async def test_a_shadow_answering_other_words_diverges_in_text(
        start_sim, start_gateway) -> None:
    gateway, _ = await shadowed(start_sim, start_gateway,
                                SimConfig(model=MODELS["v2"], **FAST), 1.0)
    _, seen = await mirror_mixed(gateway)
    print(f"mean similarity of other words: {seen['sum'] / 12:.2f}")
    assert seen["ok"] == 12
    assert seen["text"] == 12
    assert seen["status"] == seen["tokens"] == 0  # as many tokens, other words
    assert seen["at_most_0.9"] == 12  # every one at most 0.9 alike
    assert seen["sum"] / 12 < 0.5


async def test_a_shadow_answering_the_same_words_does_not_diverge(
        start_sim, start_gateway) -> None:
    same = {"v1": MODELS["v1"], "v2": MODELS["v1"]}  # v2: the same model on another engine
    gateway, _ = await shadowed(start_sim, start_gateway,
                                SimConfig(model=MODELS["v1"], **FAST), 1.0, models=same)
    texts, seen = await mirror_mixed(gateway)
    assert len(set(texts)) > 2  # several answers, streamed and not, compared
    assert seen["ok"] == 12
    assert seen["sum"] == 12  # every one 1.0
    assert seen["status"] == seen["tokens"] == seen["text"] == 0


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
