"""CORS through a real gateway: preflights before auth, headers on actual responses."""

from __future__ import annotations

import httpx

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import StartSim

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEY = "k1-0123456789abcdef"
PAGE = "https://playground.example"
QUICK = SimConfig(decode_step_ms=1, prefill_base_ms=1)
EXPOSED = ("x-request-id, retry-after, server-timing, x-sluice-engine, x-sluice-cache, "
           "x-sluice-version, x-sluice-fallback-from")


def preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers}


async def test_without_keys_any_origin_may_call(start_sim: StartSim,
                                                start_gateway: StartGateway) -> None:
    gateway = await start_gateway([await start_sim(QUICK)])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        pre = await http.options("/v1/chat/completions", headers=preflight(PAGE, (
            "content-type, x-sluice-version, x-stainless-os, x-stainless-retry-count, x-evil")))
        chat = await http.post("/v1/chat/completions", json={**CHAT, "stream": True},
                               headers={"Origin": PAGE})
        plain = await http.post("/v1/chat/completions", json=CHAT)
    assert pre.status_code == 204
    assert pre.content == b""
    assert pre.headers["access-control-allow-origin"] == "*"
    assert pre.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    allowed = pre.headers["access-control-allow-headers"].split(", ")
    assert {"authorization", "content-type", "x-request-id", "x-session-id",
            "cache-control", "x-sluice-cache", "x-sluice-version", "x-stainless-os",
            "x-stainless-retry-count"} <= set(allowed)
    assert "x-evil" not in allowed
    assert int(pre.headers["access-control-max-age"]) == 600
    assert chat.status_code == 200
    assert chat.text.endswith("data: [DONE]\n\n")
    assert chat.headers["access-control-allow-origin"] == "*"
    assert chat.headers["access-control-expose-headers"] == EXPOSED
    assert "vary" not in chat.headers
    for name in ("x-request-id", "server-timing", "x-sluice-engine", "x-sluice-cache"):
        assert name in chat.headers
    assert "access-control-allow-origin" not in plain.headers  # no Origin, no CORS


async def test_with_keys_only_the_listed_origins(start_sim: StartSim,
                                                 start_gateway: StartGateway) -> None:
    sim = await start_sim(QUICK)
    closed = await start_gateway([sim], api_keys=[KEY])
    listed = await start_gateway([sim], api_keys=[KEY], cors={"allowed_origins": [PAGE]})
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.options(closed + "/v1/chat/completions", headers=preflight(PAGE))
        no_cors = await http.post(closed + "/v1/chat/completions", json=CHAT,
                                  headers={"Origin": PAGE, **auth})
        pre = await http.options(listed + "/v1/chat/completions", headers=preflight(PAGE))
        other = await http.options(listed + "/v1/chat/completions",
                                   headers=preflight("https://evil.example"))
        chat = await http.post(listed + "/v1/chat/completions", json=CHAT,
                               headers={"Origin": PAGE, **auth})
        unauthorized = await http.post(listed + "/v1/chat/completions", json=CHAT,
                                       headers={"Origin": PAGE})
    assert refused.status_code == other.status_code == 403
    assert refused.json()["error"]["code"] == "cors_origin_not_allowed"
    assert "access-control-allow-origin" not in refused.headers
    assert no_cors.status_code == 200  # not a browser's business: the key is what counts
    assert "access-control-allow-origin" not in no_cors.headers
    # The preflight carries no key and is answered before authentication.
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == PAGE
    assert pre.headers["vary"] == "Origin"
    assert chat.status_code == 200
    assert chat.headers["access-control-allow-origin"] == PAGE
    assert chat.headers["vary"] == "Origin"
    assert chat.headers["access-control-expose-headers"] == EXPOSED
    # A page can read why it was refused.
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == PAGE


async def test_an_options_request_that_is_no_preflight_is_routed(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([await start_sim(QUICK)])
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        response = await http.options("/v1/chat/completions", headers={"Origin": PAGE})
    assert response.status_code == 405
    assert response.headers["access-control-allow-origin"] == "*"
