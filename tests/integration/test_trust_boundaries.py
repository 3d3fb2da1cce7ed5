"""What a hostile caller can do, each finding shown refused (the trust-boundary findings:
huge integers, echoed names, request ids, log excerpts, redirects)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartGateway

HUGE = 2**70
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2, "temperature": 0}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


async def test_integers_beyond_64_bits_are_no_gateway_fault(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    asks: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {**CHAT, "seed": HUGE}),
        ("/v1/chat/completions", {**CHAT, "seed": HUGE, "stream": True}),
        ("/v1/completions", {"model": "sim-model", "prompt": "hi", "max_tokens": 2,
                             "seed": HUGE}),
        ("/v1/embeddings", {"model": "sim-model", "input": "hi", "dimensions": HUGE}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": HUGE}),
    ]
    for path, body in asks:
        async with client.post(gateway + path, json=body) as answer:
            await answer.read()
            assert answer.status < 500, (path, answer.status)
    async with client.post(gateway + "/v1/chat/completions",
                           json={**CHAT, "max_tokens": HUGE}) as refused:
        error = (await refused.json())["error"]
    assert (refused.status, error["param"]) == (400, "max_tokens")
    async with client.ws_connect(gateway + "/v1/ws") as ws:
        await ws.send_json({"id": "a", "type": "chat.completions",
                            "body": {**CHAT, "seed": HUGE}})
        while (message := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
    assert message.get("error", {}).get("code") != "internal_error", message


async def test_a_request_id_is_kept_only_when_short_printable_ascii(
        start_gateway: StartGateway, start_fake_engine: Any) -> None:
    seen: list[str | None] = []

    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        seen.append(request.headers.get("X-Request-Id"))
        return web.json_response({"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}]})

    engine = await start_fake_engine(reply)
    gateway = await start_gateway([engine.url])
    async with aiohttp.ClientSession() as http:
        for sent in ("req-42.a_b:c", "x" * 9000, "caf\xe9", "two words", ""):
            headers = {"X-Request-Id": sent} if sent else {}
            async with http.post(gateway + "/v1/chat/completions", json=CHAT,
                                 headers={**headers, "Cache-Control": "no-store"}) as answer:
                assert answer.status == 200, await answer.text()
                given = answer.headers["x-request-id"]
            if sent == "req-42.a_b:c":
                assert given == sent
            else:
                assert given != sent
                assert len(given) == 32
                assert all(c in "0123456789abcdef" for c in given)
            assert seen[-1] == given  # the engine logs the same id


async def test_a_long_model_name_is_not_echoed_whole(
        start_gateway: StartGateway, sim_server: str) -> None:
    gateway = await start_gateway([sim_server])
    name = "m" * 100_000
    async with aiohttp.ClientSession() as http:
        for method, path, body in (
                ("POST", "/v1/chat/completions", {**CHAT, "model": name}),
                ("POST", "/v1/embeddings", {"model": name, "input": "hi"}),
                ("GET", f"/v1/models/{name[:5_000]}", None)):  # (a longer head is a 431)
            async with http.request(method, gateway + path, json=body) as answer:
                raw = await answer.read()
            assert answer.status == 404, (path, answer.status)
            assert len(raw) < 1_000, (path, len(raw))
            assert "mmmm" in (await answer.json())["error"]["message"]  # it still says which


ADMIN_TOKEN = "admin-token-0123456789abcdef-0123456789"


async def test_a_trailing_slash_is_no_redirect_built_from_host(
        start_gateway: StartGateway, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([], admin={"token": ADMIN_TOKEN})
    for path in ("/admin/keys/", "/admin/versions/"):
        async with client.get(gateway + path, allow_redirects=False,
                              headers={"Host": "evil.example"}) as answer:
            body = await answer.json()
        assert answer.status == 404, (path, answer.status)
        assert "Location" not in answer.headers
        assert body["error"]["type"] == "invalid_request_error"


async def test_wrong_admin_tokens_are_backed_off_per_address(
        start_gateway: StartGateway, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([], admin={"token": ADMIN_TOKEN},
                                  observability={"open": True})
    wrong = {"Authorization": "Bearer not-the-admin-token"}
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    statuses = []
    for _ in range(7):
        async with client.get(gateway + "/admin/keys", headers=wrong) as answer:
            statuses.append(answer.status)
            retry_after = answer.headers.get("Retry-After")
    assert statuses == [401] * 5 + [429] * 2
    assert retry_after == "1"
    async with client.get(gateway + "/admin/keys", headers=right) as held:
        assert held.status == 429  # held back: the token is not even looked at
    await asyncio.sleep(1.1)
    async with client.get(gateway + "/admin/keys", headers=right) as answer:
        assert answer.status == 200
    async with client.get(gateway + "/admin/keys", headers=wrong) as answer:
        assert answer.status == 401  # a right token cleared the address
    async with client.get(gateway + "/metrics") as metrics:
        text = await metrics.text()
    assert 'sluice_admin_auth_failures_total{outcome="invalid"} 6.0' in text
    assert 'sluice_admin_auth_failures_total{outcome="held_back"} 3.0' in text


async def test_a_websocket_origin_must_be_the_gateways_own_address_scheme_included(
        start_gateway: StartGateway, sim_server: str, client: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])  # no keys: origins are checked
    port = gateway.rsplit(":", 1)[1]
    refused = [
        # DNS rebinding: the page's own name in Origin and Host alike
        ({"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}),
        ({"Origin": f"https://127.0.0.1:{port}"}),  # another scheme
        ({"Origin": "http://127.0.0.1:1"}),  # another port
    ]
    for headers in refused:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect(gateway + "/v1/ws", headers=headers)
        assert caught.value.status == 403, headers
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        async with client.ws_connect(gateway + "/v1/ws", origin=origin):
            pass
    listed = await start_gateway([sim_server], websocket={
        "allowed_origins": [f"http://App.example:{port}"]})
    async with client.ws_connect(listed + "/v1/ws", origin=f"http://app.example:{port}"):
        pass
