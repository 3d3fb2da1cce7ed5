"""What a hostile caller can do, each finding shown refused (the trust-boundary findings:
huge integers, echoed names, request ids, redirects, admin token guessing, WebSocket
origins, revoked keys on open sockets, realtime sessions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartGateway
from tests.integration.conftest import ServeGateway
from tests.redis_server import RedisServer

HUGE = 2**70
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2, "temperature": 0}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


@pytest.fixture
async def sockets() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that holds any number of WebSockets at once."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
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


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[Any], int | None]:
    """Every JSON message until the socket closes, and its close code."""
    seen: list[Any] = []
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING):
            return seen, ws.close_code
        seen.append(message.json())


async def test_a_revoked_key_ends_its_open_sockets_on_every_replica(
        redis_server: RedisServer, serve_gateway: ServeGateway, sim_server: str,
        sockets: aiohttp.ClientSession) -> None:
    client = sockets
    settings = {"admin": {"token": ADMIN_TOKEN}, "redis": {"probe_interval_s": 0.2}}
    a = await serve_gateway([sim_server], redis_server.url, **settings)
    b = await serve_gateway([sim_server], redis_server.url, **settings)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client.post(a + "/admin/keys", json={"name": "soon-revoked"},
                           headers=admin) as made:
        key = await made.json()
    auth = {"Authorization": f"Bearer {key['key']}"}
    sockets = [await client.ws_connect(g + "/v1/ws", headers=auth) for g in (a, b)]
    sessions = [await client.ws_connect(g + "/v1/realtime?model=sim-model", headers=auth)
                for g in (a, b)]
    for ws in sockets:
        await ws.send_json({"id": "before", "type": "chat.completions", "body": CHAT})
        while (message := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
        assert message["type"] == "done", message
    for rt in sessions:
        assert (await rt.receive_json(timeout=10))["type"] == "session.created"

    async with client.delete(a + f"/admin/keys/{key['id']}", headers=admin) as revoked:
        assert revoked.status == 200
    await asyncio.sleep(1.0)  # the revocation is published; b applies it in milliseconds

    for ws in sockets:
        await ws.send_json({"id": "after", "type": "chat.completions", "body": CHAT})
        seen, code = await until_closed(ws)
        assert [m["type"] for m in seen] == ["error"], seen
        assert (seen[0]["error"]["code"], code) == ("invalid_api_key", 1008)
    for rt in sessions:
        await rt.send_json({"type": "input_audio_buffer.append", "audio": "AAAA"})
        seen, code = await until_closed(rt)
        assert [(e["type"], e["code"]) for e in seen] == [("error", "invalid_api_key")]
        assert code == 1008


async def test_realtime_sessions_are_capped_per_key(
        start_gateway: StartGateway, sim_server: str, sockets: aiohttp.ClientSession) -> None:
    keys = ["sk-first-realtime-key-0123456789", "sk-other-realtime-key-0123456789"]
    gateway = await start_gateway([sim_server], api_keys=keys, websocket={
        "max_realtime_sessions": 4, "max_realtime_sessions_per_key": 2})
    url = gateway + "/v1/realtime?model=sim-model"
    first, other = ({"Authorization": f"Bearer {k}"} for k in keys)
    held = [await sockets.ws_connect(url, headers=first) for _ in range(2)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await sockets.ws_connect(url, headers=first)
    assert caught.value.status == 429
    held += [await sockets.ws_connect(url, headers=other) for _ in range(2)]  # not starved
    await held.pop().close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await sockets.ws_connect(url, headers=first)  # a free slot is not this key's
    await held.pop(0).close()
    await asyncio.sleep(0.2)
    held.append(await sockets.ws_connect(url, headers=first))  # its own slot came back
    for socket in held:
        await socket.close()


async def test_every_realtime_session_update_is_checked_for_its_model(
        start_gateway: StartGateway, sim_server: str, sockets: aiohttp.ClientSession) -> None:
    gateway = await start_gateway([sim_server])
    async with sockets.ws_connect(gateway + "/v1/realtime?model=sim-model") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session.created"
        await ws.send_json({"type": "session.update", "model": "sim-model"})
        for sneaky in ('{"type": "session.update", "model": "other-model"}',
                       '{"type": "session.update", "session": {"model": "other-model"}}',
                       '{"type": "session\\u002eupdate", "model": "other-model"}'):
            await ws.send_str(sneaky)
            refused = await ws.receive_json(timeout=10)
            assert (refused["type"], refused["code"]) == ("error", "model_mismatch"), sneaky
        await ws.send_json({"type": "input_audio_buffer.append", "audio": "AAAA"})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        while (event := await ws.receive_json(timeout=10))["type"] == "transcription.delta":
            pass
        assert event["type"] == "transcription.done", event  # the session went on
