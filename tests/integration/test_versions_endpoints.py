"""Model aliases on every route that names a model, through a real gateway and two
simulators (v1 on ``sim-a``, engine ``e0``; v2 on ``sim-b``, engine ``e1``): the
passthrough endpoints, the ``/v1/ws`` multiplexer and ``/v1/realtime`` resolve an alias
as chat does (split, pin, fallback chain), send the served model's name to the chosen
version's engine, say which version served, and count it in the per-version tallies
that guard a rollout. Which engine answered is read from the simulators' own counters."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from loadtests.launch import free_port
from simulator import SimConfig
from tests.integration.helpers import gateway_metric, metric, sim_handled, wait_until
from tests.integration.test_versions import ADMIN, ADMIN_TOKEN, KEY, MODELS, STATIC_KEY

FAST: dict[str, Any] = {"prefill_base_ms": 1, "decode_step_ms": 1}
PIN_V2 = {"x-sluice-version": "v2"}
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {"input": "hi", "max_output_tokens": 2}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 2, "stream": True}),
    ("/v1/embeddings", {"input": "hi"}),
    ("/tokenize", {"prompt": "hi there"}),
    ("/detokenize", {"tokens": [1, 2]}),
]
"""A request to each passthrough endpoint the simulator serves (the alias as model)."""


def alias(weights: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"aliases": {"chat": {
        "versions": {name: {"model": model} for name, model in MODELS.items()},
        "weights": weights, **extra}}}


async def two_sims(start_sim, **v2: Any) -> list[str]:
    return [await start_sim(SimConfig(model=MODELS["v1"], **FAST)),
            await start_sim(SimConfig(model=MODELS["v2"], **{**FAST, **v2}))]


async def sessions_on(http: httpx.AsyncClient, sim: str) -> int:
    page = (await http.get(sim + "/metrics")).text
    return int(metric(page, "vllm:websocket_connections_active"))


async def test_passthrough_endpoints_serve_an_alias_by_its_policy(
        start_sim, start_gateway) -> None:
    sims = await two_sims(start_sim)
    gateway = await start_gateway(sims, versions=alias({"v1": 50, "v2": 50}))
    paths = sorted({path for path, _ in CALLS})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        pinned = []
        for path, body in CALLS:
            response = await http.post(path, json={"model": "chat", **body}, headers=PIN_V2)
            pinned.append((path, response))
        counts = {sim: {p: await sim_handled(http, sim, p) for p in paths} for sim in sims}
        split = [(await http.post("/tokenize", json={"model": "chat", "prompt": "x"},
                                  headers={"x-request-id": f"split-{n}"})).headers
                 for n in range(100)]
        after = [await sim_handled(http, sim, "/tokenize") for sim in sims]
        unknown = [await http.post(path, json={"model": "nope", **body}) for path, body in CALLS]
        bad_pin = await http.post("/v1/embeddings", json={"model": "chat", "input": "x"},
                                  headers={"x-sluice-version": "v9"})
        counted = await gateway_metric(http, gateway, 'sluice_requests_total{endpoint='
                                       '"embeddings",engine="e1",model="chat",status="200",'
                                       'version="v2"}')
        models = {card["id"] for card in (await http.get("/v1/models")).json()["data"]}
        card = (await http.get("/v1/models/chat")).json()
    for path, response in pinned:
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-sluice-version"] == "v2", path
        assert response.headers["x-sluice-engine"] == "e1", path
    by_path = dict(pinned)  # the streamed /v1/responses is the later one
    assert by_path["/v1/embeddings"].json()["model"] == "sim-b"  # as chat: the served name
    assert "event: response.completed" in by_path["/v1/responses"].text
    assert counts[sims[0]] == dict.fromkeys(paths, 0)
    assert counts[sims[1]] == {"/detokenize": 1, "/tokenize": 1, "/v1/embeddings": 1,
                               "/v1/responses": 2}
    versions = Counter(headers["x-sluice-version"] for headers in split)
    assert set(versions) == {"v1", "v2"}
    assert {h["x-sluice-engine"] for h in split if h["x-sluice-version"] == "v1"} == {"e0"}
    assert after == [versions["v1"], 1 + versions["v2"]]
    for response in unknown:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"
    assert bad_pin.status_code == 400
    assert bad_pin.json()["error"]["code"] == "unknown_version"
    assert counted == 1
    assert {"chat", "sim-a", "sim-b"} <= models
    assert card["versions"] == ["v1", "v2"]


async def test_the_fallback_chain_answers_a_passthrough_request(
        start_sim, start_gateway) -> None:
    first = await start_sim(SimConfig(model=MODELS["v1"], **FAST))
    down = f"http://127.0.0.1:{free_port()}"  # v2's engine: nothing listens there
    gateway = await start_gateway([first, down],
                                  versions=alias({"v2": 1}, fallback=["v2", "v1"]))
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/embeddings", json={"model": "chat", "input": "x"})
    assert response.status_code == 200, response.text
    assert response.headers["x-sluice-version"] == "v1"
    assert response.headers["x-sluice-fallback-from"] == "v2"
    assert response.json()["model"] == "sim-a"


async def test_a_rollout_judged_on_responses_traffic_rolls_back_a_failing_version(
        start_sim, start_gateway) -> None:
    sims = await two_sims(start_sim, error_rate=1.0)
    gateway = await start_gateway(
        sims, admin={"token": ADMIN_TOKEN}, api_keys=[STATIC_KEY],
        versions={**alias({"v1": 1}), "rollout": {"min_requests": 5,
                                                  "check_interval_s": 0.05}})
    stop = asyncio.Event()

    async def loop(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await http.post("/v1/responses", headers=KEY, json={
                "model": "chat", "input": "hi", "max_output_tokens": 1})

    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        clients = [asyncio.create_task(loop(http)) for _ in range(4)]
        try:
            started = await http.post("/admin/versions/chat/rollout", headers=ADMIN, json={
                "to": "v2", "steps": [50, 100], "hold_s": 60})

            async def ended() -> bool:
                state = (await http.get("/admin/versions/chat/rollout", headers=ADMIN)).json()
                return bool(state["state"] != "running")

            await wait_until(ended, "the rollout to end")  # 60 s holds: only a breach ends it
        finally:
            stop.set()
            await asyncio.gather(*clients)
        state = (await http.get("/admin/versions/chat/rollout", headers=ADMIN)).json()
    assert started.status_code == 202, started.text
    assert state["state"] == "rolled_back"
    breach = next(d for d in state["decisions"] if d["action"] == "breach")
    assert "error rate" in breach["reason"]
    assert breach["new"]["requests"] >= 5  # /v1/responses requests, tallied for v2
    assert breach["base"]["errors"] == 0


async def test_the_ws_multiplexer_resolves_an_alias(start_sim, start_gateway) -> None:
    sims = await two_sims(start_sim)
    gateway = await start_gateway(sims, versions=alias({"v1": 90, "v2": 10}))
    body = {"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    frames = [{"id": "pinned-by-socket", "type": "chat.completions", "body": body},
              {"id": "pinned-by-frame", "type": "chat.completions", "body": body,
               "version": "v1"},
              {"id": "unknown", "type": "chat.completions", "body": {**body, "model": "nope"}},
              {"id": "bad-pin", "type": "chat.completions", "body": body, "version": "v9"}]
    ends: dict[str, dict[str, Any]] = {}
    served: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as client, client.ws_connect(
            gateway + "/v1/ws", headers=PIN_V2) as ws:
        for frame in frames:
            await ws.send_json(frame)
        while len(ends) < len(frames):
            message = await ws.receive_json(timeout=10)
            if message["type"] == "chunk":
                served.setdefault(message["id"], set()).add(message["data"]["model"])
            else:
                ends[message["id"]] = message
    async with httpx.AsyncClient(timeout=10) as http:
        chats = [await sim_handled(http, sim, "/v1/chat/completions") for sim in sims]
    assert ends["pinned-by-socket"]["type"] == "done"
    assert ends["pinned-by-socket"]["version"] == "v2"
    assert ends["pinned-by-frame"]["version"] == "v1"
    assert served == {"pinned-by-socket": {"sim-b"}, "pinned-by-frame": {"sim-a"}}
    assert chats == [1, 1]
    assert ends["unknown"]["error"]["code"] == "model_not_found"
    assert ends["bad-pin"]["error"]["code"] == "unknown_version"


async def test_realtime_sessions_resolve_an_alias(start_sim, start_gateway) -> None:
    sims = await two_sims(start_sim)
    gateway = await start_gateway(sims, versions=alias({"v1": 90, "v2": 10}))
    url = gateway.replace("http", "ws", 1) + "/v1/realtime"
    append = orjson.dumps({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(b"\x00\x01" * 160).decode()}).decode()
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        async with connect(url + "?model=chat", additional_headers=PIN_V2) as ws:
            headers = ws.response.headers
            created = await ws.recv()
            on_engines = [await sessions_on(http, sim) for sim in sims]
            await ws.send('{"type": "session.update", "model": "chat"}')
            await ws.send(append)
            await ws.send('{"type": "input_audio_buffer.commit"}')
            delta, done = await ws.recv(), await ws.recv()
        async with connect(url, additional_headers={"x-sluice-version": "v1"}) as ws:
            await ws.send('{"type": "session.update", "model": "chat"}')
            await ws.send(append)
            await ws.send('{"type": "input_audio_buffer.commit"}')
            first_message = [await ws.recv() for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url + "?model=nope"):
                pass

        async def counted() -> bool:
            page = (await http.get("/metrics")).text
            return all(metric(page, 'sluice_requests_total{endpoint="realtime",engine='
                                    f'"{engine}",model="chat",status="200",version="{v}"}}')
                       == 1 for engine, v in (("e0", "v1"), ("e1", "v2")))

        await wait_until(counted, "both sessions to be counted under their versions")
    assert headers["x-sluice-version"] == "v2"
    assert headers["x-sluice-engine"] == "e1"
    assert '"session.created"' in created
    assert on_engines == [0, 1]
    assert '"transcription.delta"' in delta
    assert '"transcription.done"' in done  # the engine took the renamed session.update
    assert ['"transcription.done"' in m for m in first_message] == [False, False, True]
    assert refused.value.response.status_code == 404
    assert b"model_not_found" in refused.value.response.body
