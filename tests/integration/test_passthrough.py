"""The passthrough routes through a real gateway, in front of simulator engines (and
scripted ones for the endpoints the simulator does not have): responses, streamed and
not, with the official ``openai`` client; embeddings; tokenize and detokenize; score,
rerank, pooling and classify forwarded as sent; model cards and ``/version``; an
endpoint no engine has; retries before the first byte; auth and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from openai import APIError, AsyncOpenAI

from simulator import SimConfig
from tests.conftest import StartGateway
from tests.integration.conftest import FAST_SIM, StartFakeEngine, StartSim
from tests.integration.fake_engine import FakeEngine, error_reply, raw_reply
from tests.integration.helpers import gateway_metric

KEY = "passthrough-test-key-0123456789"
OTHER_PATHS = ["/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/pooling",
               "/classify"]


def _client(gateway: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)


async def _requests(http: httpx.AsyncClient, gateway: str, endpoint: str,
                    status: str = "200") -> float:
    return await gateway_metric(
        http, gateway, f'sluice_requests_total{{endpoint="{endpoint}",engine="e0",'
                       f'model="sim-model",status="{status}",version="none"}}')


async def test_responses_with_the_openai_client(sim_server: str,
                                               start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with _client(gateway) as client, httpx.AsyncClient() as http:
        whole = await client.responses.create(model="sim-model", input="Say three words",
                                              max_output_tokens=3)
        stream = await client.responses.create(model="sim-model", input="Say three words",
                                               max_output_tokens=3, stream=True)
        events = [event async for event in stream]
        counted = await _requests(http, gateway, "responses")
        tokens = await gateway_metric(http, gateway,
                                      'sluice_tokens_total{kind="completion",model="sim-model",'
                                      'version="none"}')
    assert whole.status == "completed"
    assert len(whole.output_text.split()) == 3
    assert whole.usage is not None
    assert whole.usage.output_tokens == 3
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 3
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text  # same prompt, same simulated text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert counted == 2
    assert tokens == 6


async def test_a_responses_stream_is_relayed_event_by_event_with_its_event_lines(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    body = {"model": "sim-model", "input": "hi", "max_output_tokens": 2, "stream": True}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    for block in blocks:
        kind, data = block.split("\n")
        assert kind.startswith("event: response.")
        assert orjson.loads(data.removeprefix("data: "))["type"] == kind.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.completed")
    assert "[DONE]" not in response.text


async def test_embeddings_with_the_openai_client(sim_server: str,
                                                start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with _client(gateway) as client, httpx.AsyncClient(base_url=gateway) as http:
        first = await client.embeddings.create(model="sim-model", input=["one", "two two"])
        again = await client.embeddings.create(model="sim-model", input="one")
        floats = (await http.post("/v1/embeddings", json={
            "model": "sim-model", "input": "one", "encoding_format": "float"})).json()
        counted = await _requests(http, gateway, "embeddings")
    assert [len(d.embedding) for d in first.data] == [32, 32]
    assert first.data[0].embedding == again.data[0].embedding != first.data[1].embedding
    assert floats["data"][0]["embedding"] == pytest.approx(first.data[0].embedding, abs=1e-6)
    assert first.usage.prompt_tokens == 5
    assert counted == 3


async def test_tokenize_and_detokenize_are_consistent(sim_server: str,
                                                      start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        # No model: the fleet serves exactly one, so that one.
        tokens = (await http.post("/tokenize", json={"prompt": "the quick fox",
                                                     "add_special_tokens": False})).json()
        text = (await http.post("/detokenize", json={"model": "sim-model",
                                                     "tokens": tokens["tokens"]})).json()
        with_bos = (await http.post("/tokenize", json={"prompt": "the quick fox"})).json()
        chat = {"model": "sim-model", "max_tokens": 1,
                "messages": [{"role": "user", "content": "the quick fox"}]}
        usage = (await http.post("/v1/chat/completions", json=chat)).json()["usage"]
        chat_tokens = (await http.post("/tokenize", json={
            "model": "sim-model", "messages": chat["messages"]})).json()
        counted = await _requests(http, gateway, "tokenize")
    assert tokens["count"] == 3
    assert with_bos["count"] == 4
    assert text == {"prompt": "the quick fox"}
    assert chat_tokens["count"] == usage["prompt_tokens"]
    assert counted == 3


@pytest.mark.parametrize("path", OTHER_PATHS)
async def test_other_endpoints_are_forwarded_as_sent(start_fake_engine: StartFakeEngine,
                                                     start_gateway: StartGateway,
                                                     path: str) -> None:
    answer = {"id": "x", "object": "list", "data": [{"index": 0, "score": 0.5}],
              "usage": {"prompt_tokens": 4, "total_tokens": 4}}

    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({**answer, "path": request.path})

    engine = await start_fake_engine(reply, paths=(path,))
    gateway = await start_gateway([engine.url])
    body = {"model": "sim-model", "query": "q", "documents": ["a", "b"], "extra": [1, {}]}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post(path, json=body)
        name = "rerank" if "rerank" in path else path.rsplit("/", 1)[1]
        counted = await _requests(http, gateway, name)
    assert response.status_code == 200, response.text
    assert response.json() == {**answer, "path": path}
    assert engine.received == [body]
    assert counted == 1


@pytest.mark.parametrize("path", OTHER_PATHS)
async def test_an_endpoint_the_engines_lack_is_404_unsupported_endpoint(
        start_sim: StartSim, start_gateway: StartGateway, path: str) -> None:
    sims = [await start_sim(FAST_SIM) for _ in range(2)]
    gateway = await start_gateway(sims, resilience={"breaker": {"failure_threshold": 1}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        answers = [await http.post(path, json={"model": "sim-model", "text_1": "a"})
                   for _ in range(3)]
        ready = (await http.get("/ready")).json()
        errors = await gateway_metric(http, gateway, "sluice_upstream_errors_total")
        retries = await gateway_metric(http, gateway, "sluice_retries_total")
    for answer in answers:
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "unsupported_endpoint"
        assert path in answer.json()["error"]["message"]
    assert [e["circuit"] for e in ready["engines"]] == ["closed", "closed"]
    assert errors == 0
    assert retries == 0


async def test_a_missing_model_is_not_an_unsupported_endpoint(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        unknown = await http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


async def test_without_model_and_with_two_served_the_model_is_required(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    sims = [await start_sim(FAST_SIM), await start_sim(SimConfig(model="other"))]
    gateway = await start_gateway(sims)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/tokenize", json={"prompt": "hi"})
        wrong = await http.post("/tokenize", json={"model": 7, "prompt": "hi"})
        counted = await gateway_metric(
            http, gateway, 'sluice_requests_total{endpoint="tokenize",engine="none",'
                           'model="unknown",status="400",version="none"}')
    assert response.status_code == 400  # a field error, as OpenAI and vLLM answer it
    assert response.json()["error"]["param"] == "model"
    assert "other, sim-model" in response.json()["error"]["message"]
    assert wrong.status_code == 400
    assert counted == 2


async def test_model_cards_and_version(start_sim: StartSim,
                                       start_gateway: StartGateway) -> None:
    sim = await start_sim(SimConfig(model="org/model-a"))
    gateway = await start_gateway([sim])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        card = await http.get("/v1/models/org/model-a")
        missing = await http.get("/v1/models/org/model-b")
        version = await http.get("/version")
    assert card.status_code == 200
    assert (card.json()["id"], card.json()["max_model_len"]) == ("org/model-a", 2048)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert version.json() == {"version": "0.0.0+simulator"}


async def test_an_engine_slow_to_answer_version_is_a_504_that_names_no_engine_address(
        start_gateway: StartGateway) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({"version": "late"})

    engine = FakeEngine(error_reply(404, {"message": "Not Found"}), gets={"/version": stall})
    await engine.start()
    try:
        gateway = await start_gateway([engine.url], timeouts={"control_s": 0.5})
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            version = await http.get("/version")
    finally:
        await engine.close()
    assert version.status_code == 504
    assert "127.0.0.1" not in version.text


async def test_an_endless_version_answer_is_cut_at_a_bound(
        start_gateway: StartGateway) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"version": "')
        for _ in range(40):  # 40 MiB: more than any control answer may be
            await response.write(b"x" * (1 << 20))
        await response.write(b'"}')
        return response

    engine = FakeEngine(error_reply(404, {"message": "Not Found"}), gets={"/version": endless})
    await engine.start()
    try:
        gateway = await start_gateway([engine.url])
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            version = await http.get("/version")
    finally:
        await engine.close()
    assert version.status_code == 502
    assert version.json()["error"]["code"] == "engine_error"


async def test_a_5xx_before_the_first_byte_is_retried_on_another_engine(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    async def good(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [], "usage": {
            "prompt_tokens": 1, "total_tokens": 1}})

    broken = await start_fake_engine(error_reply(503, {"message": "overloaded"}),
                                paths=("/v1/embeddings",))
    healthy = await start_fake_engine(good, paths=("/v1/embeddings",))
    gateway = await start_gateway([broken.url, healthy.url],
                                  routing={"default": {"strategy": "round_robin"}})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        answers = [await http.post("/v1/embeddings", json={"model": "sim-model",
                                                           "input": f"x{i}"})  # not cached
                   for i in range(4)]
        retries = await gateway_metric(http, gateway, 'sluice_retries_total{model="sim-model",'
                                                      'version="none"}')
        errors = await gateway_metric(http, gateway,
                                      'sluice_upstream_errors_total{engine="e0",')
    assert [a.status_code for a in answers] == [200] * 4
    assert len(healthy.received) == 4
    assert retries == len(broken.received) >= 1
    assert errors == len(broken.received)


async def test_a_responses_stream_that_breaks_ends_with_an_error_event(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    first = (b'event: response.created\ndata: {"type":"response.created",'
             b'"sequence_number":0,"response":{}}\n\n')
    engine = await start_fake_engine(raw_reply(first, b"event: response.output_text.delta\n"
                                                 b"data: {oops\n\n"),
                                paths=("/v1/responses",))
    gateway = await start_gateway([engine.url])
    body = {"model": "sim-model", "input": "hi", "stream": True}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/responses", json=body)
        errors = await gateway_metric(http, gateway, 'sluice_upstream_errors_total{engine="e0",')
        counted = await _requests(http, gateway, "responses", "502")
    blocks = [b for b in response.text.split("\n\n") if b]
    assert response.status_code == 200
    assert blocks[0] == first.decode().strip()
    kind, data = blocks[1].split("\n")
    assert kind == "event: error"
    error = orjson.loads(data.removeprefix("data: "))
    assert (error["type"], error["code"], error["sequence_number"]) == (
        "error", "engine_error", 1)
    assert error["error"]["message"] == "engine sent an event that is not JSON"
    assert len(blocks) == 2
    assert errors == 1
    assert counted == 1
    async with _client(gateway) as client:
        stream = await client.responses.create(model="sim-model", input="hi", stream=True)
        with pytest.raises(APIError, match="not JSON"):
            async for _ in stream:
                pass


async def test_a_responses_stream_broken_before_its_first_event_is_a_502(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    engine = await start_fake_engine(raw_reply(b"<html>oops</html>"), paths=("/v1/responses",))
    gateway = await start_gateway([engine.url])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/responses", json={"model": "sim-model",
                                                          "input": "hi", "stream": True})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "engine_error"


async def test_passthrough_routes_need_a_key_and_the_docs_do_not(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server], api_keys=[KEY])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        body = {"model": "sim-model", "prompt": "hi"}
        refused = [await http.post("/tokenize", json=body),
                   await http.get("/version"), await http.get("/v1/models/sim-model")]
        allowed = await http.post("/tokenize", json=body,
                                  headers={"Authorization": f"Bearer {KEY}"})
        docs = [await http.get("/openapi.json"), await http.get("/docs")]
        http.headers["Authorization"] = f"Bearer {KEY}"
        counted = await gateway_metric(
            http, gateway, 'sluice_requests_total{endpoint="tokenize",engine="none",'
                           'model="unknown",status="401",version="none"}')
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert allowed.status_code == 200
    assert [r.status_code for r in docs] == [200, 200]
    assert counted == 1
