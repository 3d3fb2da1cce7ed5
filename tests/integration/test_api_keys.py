"""Managed API keys through a real gateway and a simulator: the admin API, the official
`openai` client with a created key, revocation, model permissions, RPM and TPM limits,
per-key metrics and the access log."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from simulator import SimConfig
from tests.integration.helpers import gateway_metric

ADMIN_TOKEN = "admin-" + "0123456789abcdef" * 2
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATIC_KEY = "sk-static-0123456789abcdef"
FAST = SimConfig(decode_step_ms=1, prefill_base_ms=1)
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def keyed_gateway(start_sim, start_gateway, **overrides: object) -> str:
    sim = await start_sim(FAST)
    return await start_gateway([sim], admin={"token": ADMIN_TOKEN}, **overrides)


async def create_key(gateway: str, **spec: object) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.post("/admin/keys", headers=ADMIN,
                                   json={"name": "test", **spec})
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def client(gateway: str, key: object) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway + "/v1", api_key=str(key), max_retries=0)


async def test_a_created_key_works_until_it_is_revoked(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway)
    created = await create_key(gateway, models=["sim-model"], rpm=100)
    assert re.fullmatch(r"k-[0-9a-f]{12}", str(created["id"]))
    assert str(created["key"]).startswith("sk-sluice-")
    async with client(gateway, created["key"]) as api:
        stream = await api.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            stream=True)
        assert [chunk async for chunk in stream]
        async with httpx.AsyncClient(base_url=gateway) as http:
            listed = (await http.get("/admin/keys", headers=ADMIN)).json()
            revoked = await http.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
            again = await http.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
            unknown = await http.delete("/admin/keys/k-000000000000", headers=ADMIN)
        with pytest.raises(openai.AuthenticationError) as info:
            await api.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}])
    assert listed["object"] == "list"
    [entry] = listed["data"]
    assert entry["id"] == created["id"]
    assert entry["models"] == ["sim-model"]
    assert "key" not in entry
    assert "key_hash" not in entry
    assert str(created["key"]) not in str(listed)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "key_not_found"
    assert info.value.status_code == 401
    assert info.value.body["message"] == "API key has been revoked"  # type: ignore[index]


async def test_the_admin_api_needs_its_token(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway, api_keys=[STATIC_KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        bare = await http.get("/admin/keys")
        wrong = await http.get("/admin/keys", headers={"Authorization": "Bearer nope"})
        api_key = await http.get("/admin/keys",
                                 headers={"Authorization": f"Bearer {STATIC_KEY}"})
        invalid = await http.post("/admin/keys", headers=ADMIN, json={"name": "x", "rpm": 0})
        unknown_field = await http.post("/admin/keys", headers=ADMIN,
                                        json={"name": "x", "key": "mine"})
    assert bare.status_code == wrong.status_code == api_key.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "rpm"
    assert unknown_field.status_code == 400


async def test_without_an_admin_token_there_is_no_admin_api(start_sim, start_gateway) -> None:
    sim = await start_sim(FAST)
    gateway = await start_gateway([sim], api_keys=[STATIC_KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.get("/admin/keys", headers=ADMIN)
        posted = await http.post("/admin/keys", headers=ADMIN, json={"name": "x"})
    assert response.status_code == posted.status_code == 404


async def test_static_keys_keep_working_beside_managed_ones(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway,
                                  api_keys=["sk-other-0123456789abcdef", STATIC_KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        static = await http.post("/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": f"Bearer {STATIC_KEY}"})
        none = await http.post("/v1/chat/completions", json=CHAT)
        wrong = await http.post("/v1/chat/completions", json=CHAT,
                                headers={"Authorization": "Bearer sk-sluice-nothing"})
        http.headers["Authorization"] = f"Bearer {STATIC_KEY}"  # /metrics needs a key
        counted = await gateway_metric(
            http, gateway, 'sluice_key_requests_total{key_id="static-1",model="sim-model",'
                           'status="200",version="none"}')
    assert static.status_code == 200
    assert none.status_code == wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "invalid API key"
    assert counted == 1


async def test_a_model_not_allowed_is_403_naming_it(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway)
    created = await create_key(gateway, models=["other-model"])
    async with client(gateway, created["key"]) as api:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await api.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            await api.embeddings.create(model="sim-model", input="hi")  # passthrough too
    assert info.value.body == {  # type: ignore[comparison-overlap]
        "message": f"key {created['id']} may not use model 'sim-model'",
        "type": "permission_error", "param": "model", "code": "model_not_allowed"}


async def test_an_rpm_limit_lets_exactly_n_through(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway)
    created = await create_key(gateway, rpm=5)
    auth = {"Authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(base_url=gateway, timeout=30, headers=auth) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0})
            for i in range(12)))
        refused_metric = await gateway_metric(
            http, gateway, f'sluice_key_requests_total{{key_id="{created["id"]}",'
                           'model="sim-model",status="429",version="none"}')
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 5 + [429] * 7
    for answer in answers:
        if answer.status_code == 429:
            error = answer.json()["error"]
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "rate_limit_exceeded"
            assert error["message"].startswith(
                f"key {created['id']} is limited to 5 requests per minute")
            assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert refused_metric == 7


async def test_tpm_counts_the_tokens_streamed(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway)
    created = await create_key(gateway, tpm=1)
    async with client(gateway, created["key"]) as api:
        stream = await api.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            stream=True, stream_options={"include_usage": True})
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None][-1]
        with pytest.raises(openai.RateLimitError) as info:
            await api.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}])
    auth = {"Authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(base_url=gateway, headers=auth) as http:
        charged = await gateway_metric(
            http, gateway, f'sluice_key_tokens_total{{key_id="{created["id"]}",'
                           'model="sim-model",version="none"}')
    assert usage.completion_tokens == 6
    assert charged == usage.prompt_tokens + usage.completion_tokens
    assert "is limited to 1 tokens per minute" in info.value.message
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 61


async def test_logs_carry_the_key_id_never_the_key(start_sim, start_gateway,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway, access_log=True)
    caplog.set_level(logging.DEBUG)
    created = await create_key(gateway)
    async with httpx.AsyncClient(base_url=gateway) as http:
        answer = await http.post("/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": f"Bearer {created['key']}"})
    assert answer.status_code == 200
    lines = [r for r in caplog.records
             if r.name == "sluice.access" and getattr(r, "path", "") == "/v1/chat/completions"]
    assert [getattr(r, "key_id", None) for r in lines] == [created["id"]]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert str(created["key"]) not in logged


async def test_websocket_requests_carry_the_key(start_sim, start_gateway) -> None:
    gateway = await keyed_gateway(start_sim, start_gateway)
    created = await create_key(gateway, models=["other-model"], rpm=1)
    auth = {"Authorization": f"Bearer {created['key']}"}
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(gateway + "/v1/ws", headers=auth) as ws:
        await ws.send_json({"id": "r1", "type": "chat.completions",
                            "body": {**CHAT, "stream": True}})
        async with asyncio.timeout(10):
            answer = await ws.receive_json()
    assert answer["type"] == "error"
    assert answer["error"]["code"] == "model_not_allowed"
    async with httpx.AsyncClient(base_url=gateway, headers=auth) as http:
        counted = await gateway_metric(
            http, gateway, f'sluice_key_requests_total{{key_id="{created["id"]}",'
                           'model="sim-model",status="403",version="none"}')
    assert counted == 1
