"""The response cache on ``/v1/embeddings`` through a real gateway: a repeated request
answered without an engine call (the simulator's own request counter unchanged), every
field that changes the vectors in the key, ``Cache-Control``, one key space per API
key, the official ``openai`` client reading a hit, the entry size bound, answers that
are not stored, identical requests in flight sharing one upstream call, a hit taking no
admission slot, and the other passthrough routes left alone."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from aiohttp import web
from openai import AsyncOpenAI

from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine, StartSim
from tests.integration.fake_engine import FakeEngine
from tests.integration.helpers import gateway_metric, sim_handled, wait_until

PATH = "/v1/embeddings"
BODY: dict[str, Any] = {"model": "sim-model", "input": ["one", "two words"]}
KEY_1, KEY_2 = "sk-test-one-0123456789", "sk-test-two-0123456789"
VECTORS = {"object": "list", "model": "sim-model",
           "data": [{"index": 0, "object": "embedding", "embedding": [0.6, 0.8]}],
           "usage": {"prompt_tokens": 1, "total_tokens": 1}}


async def embed(http: httpx.AsyncClient, body: dict[str, Any], key: str | None = None,
                **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    response = await http.post(PATH, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def results(http: httpx.AsyncClient, *bodies: dict[str, Any]) -> list[str]:
    return [(await embed(http, body)).headers["x-sluice-cache"] for body in bodies]


async def lookups(http: httpx.AsyncClient, gateway: str, result: str) -> float:
    return await gateway_metric(http, gateway, 'sluice_cache_lookups_total{model="sim-model",'
                                               f'result="{result}",version="none"}}')


async def test_a_repeated_request_is_answered_without_an_engine_call(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        first = await embed(http, BODY)
        called = await sim_handled(http, sim_server, PATH)
        second = await embed(http, {"input": BODY["input"], "model": "sim-model",
                                    "user": "someone"})  # order and `user` do not count
        assert await sim_handled(http, sim_server, PATH) == called == 1
        hits, misses = await lookups(http, gateway, "hit"), await lookups(http, gateway, "miss")
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == (
        "miss", "hit")
    assert second.content == first.content
    assert "x-sluice-engine" not in second.headers
    assert (hits, misses) == (1, 1)


async def test_what_changes_the_vectors_changes_the_key(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    changed = [{**BODY, "dimensions": 8}, {**BODY, "encoding_format": "base64"},
               {**BODY, "input": ["one", "two words!"]}, {**BODY, "input": "one"}]
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert await results(http, BODY, *changed) == ["miss"] * 5
        assert await results(http, BODY, *changed) == ["hit"] * 5
        assert await sim_handled(http, sim_server, PATH) == 5
        narrow = (await embed(http, changed[0])).json()
    assert len(narrow["data"][0]["embedding"]) == 8


async def test_cache_control_is_honoured(sim_server: str,
                                         start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        for _ in range(2):
            kept_out = await embed(http, BODY, **{"cache-control": "no-store"})
            assert kept_out.headers["x-sluice-cache"] == "bypass"
        assert await results(http, BODY) == ["miss"]
        fresh = await embed(http, BODY, **{"cache-control": "no-cache"})
        assert fresh.headers["x-sluice-cache"] == "miss"
        assert await results(http, BODY) == ["hit"]
        assert await sim_handled(http, sim_server, PATH) == 4


async def test_one_keys_answers_are_not_served_to_another(
        sim_server: str, start_gateway: StartGateway) -> None:
    apart = await start_gateway([sim_server], api_keys=[KEY_1, KEY_2])
    shared = await start_gateway([sim_server], api_keys=[KEY_1, KEY_2],
                                 cache={"shared_across_keys": True})
    for gateway, second in ((apart, "miss"), (shared, "hit")):
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            assert (await embed(http, BODY, KEY_1)).headers["x-sluice-cache"] == "miss"
            assert (await embed(http, BODY, KEY_1)).headers["x-sluice-cache"] == "hit"
            assert (await embed(http, BODY, KEY_2)).headers["x-sluice-cache"] == second


async def test_the_openai_client_reads_a_hit(sim_server: str,
                                             start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    api = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    answers = []
    async with api:
        for _ in range(2):  # the client asks for base64 and decodes it
            raw = await api.embeddings.with_raw_response.create(
                model="sim-model", input=["one", "two words"], dimensions=16)
            answers.append((raw.headers["x-sluice-cache"], raw.parse()))
    (live_result, live), (hit_result, hit) = answers
    assert (live_result, hit_result) == ("miss", "hit")
    assert [len(d.embedding) for d in hit.data] == [16, 16]
    assert [d.embedding for d in hit.data] == [d.embedding for d in live.data]
    assert hit.usage.prompt_tokens == live.usage.prompt_tokens > 0
    async with httpx.AsyncClient() as http:
        assert await sim_handled(http, sim_server, PATH) == 1


async def test_an_answer_over_the_entry_bound_is_served_but_not_stored(
        sim_server: str, start_gateway: StartGateway) -> None:
    limit = 2000
    gateway = await start_gateway([sim_server], cache={"max_entry_bytes": limit})
    small, large = {**BODY, "input": "one"}, {**BODY, "input": ["a", "b", "c", "d"]}
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        large_answers = [await embed(http, large) for _ in range(2)]
        small_answers = [await embed(http, small) for _ in range(2)]
        assert await sim_handled(http, sim_server, PATH) == 3
    assert len(small_answers[0].content) < limit < len(large_answers[0].content)
    assert [a.headers["x-sluice-cache"] for a in large_answers] == ["miss", "miss"]
    assert large_answers[1].json()["data"] == large_answers[0].json()["data"]
    assert [a.headers["x-sluice-cache"] for a in small_answers] == ["miss", "hit"]


async def test_an_answer_without_a_data_list_or_an_error_is_not_stored(
        sim_server: str, start_fake_engine: StartFakeEngine,
        start_gateway: StartGateway) -> None:
    async def no_data(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({**VECTORS, "data": None})

    engine = await start_fake_engine(no_data, paths=(PATH,))
    gateway = await start_gateway([engine.url])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert await results(http, BODY, BODY) == ["miss", "miss"]
    assert len(engine.received) == 2
    simulated = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=simulated, timeout=30) as http:
        refused = [await http.post(PATH, json={**BODY, "input": 7}) for _ in range(2)]
        assert await sim_handled(http, sim_server, PATH) == 0  # a 400 is no 2xx
    assert [r.status_code for r in refused] == [400, 400]
    assert [r.headers["x-sluice-cache"] for r in refused] == ["miss", "miss"]
    assert refused[0].json()["error"]["param"] == "input"


async def test_identical_requests_in_flight_make_one_upstream_call(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    release = asyncio.Event()

    async def held(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await release.wait()
        return web.json_response(VECTORS)

    engine = await start_fake_engine(held, paths=(PATH,))
    gateway = await start_gateway([engine.url])
    async with httpx.AsyncClient(base_url=gateway, timeout=30,
                                 limits=httpx.Limits(max_connections=40)) as http:
        answers = asyncio.gather(*(embed(http, BODY) for _ in range(20)))

        async def all_in() -> bool:
            return await gateway_metric(http, gateway, "sluice_requests_in_flight{") == 20

        await wait_until(all_in, "20 requests in flight")
        release.set()
        done = await answers
    assert len(engine.received) == 1
    assert sorted(a.headers["x-sluice-cache"] for a in done) == ["coalesced"] * 19 + ["miss"]
    assert all(a.json() == VECTORS for a in done)


async def test_followers_of_a_leader_that_failed_make_one_call_of_their_own(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway) -> None:
    release = asyncio.Event()

    async def first_refused(request: web.Request, body: dict[str, Any]
                            ) -> web.StreamResponse:
        if len(engine.received) == 1:
            await release.wait()
            return web.json_response({"error": {"message": "no", "type": "BadRequestError",
                                                "param": None, "code": 400}}, status=400)
        return web.json_response(VECTORS)

    engine = await start_fake_engine(first_refused, paths=(PATH,))
    gateway = await start_gateway([engine.url])
    async with httpx.AsyncClient(base_url=gateway, timeout=30,
                                 limits=httpx.Limits(max_connections=40)) as http:
        answers = asyncio.gather(*(http.post(PATH, json=BODY) for _ in range(10)))

        async def all_in() -> bool:
            return await gateway_metric(http, gateway, "sluice_requests_in_flight{") == 10

        await wait_until(all_in, "10 requests in flight")
        release.set()
        done = await answers
    assert len(engine.received) == 2
    assert sorted((a.status_code, a.headers["x-sluice-cache"]) for a in done) == [
        (200, "coalesced")] * 8 + [(200, "miss"), (400, "miss")]


async def test_a_hit_takes_no_admission_slot(start_fake_engine: StartFakeEngine,
                                            start_gateway: StartGateway) -> None:
    release = asyncio.Event()

    async def held_for_two(request: web.Request, body: dict[str, Any]
                           ) -> web.StreamResponse:
        if body["input"] == "two":
            await release.wait()
        return web.json_response(VECTORS)

    engine = await start_fake_engine(held_for_two, paths=(PATH,))
    gateway = await start_gateway([engine.url], admission={"models": {"sim-model": 1}})
    one, two, three = ({**BODY, "input": word} for word in ("one", "two", "three"))
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        assert await results(http, one) == ["miss"]
        holding = asyncio.create_task(embed(http, two))
        await wait_until(lambda: _received(engine, 2), "the second request at the engine")
        hit = await http.post(PATH, json=one)
        refused = await http.post(PATH, json=three)
        release.set()
        await holding
    assert (hit.status_code, hit.headers["x-sluice-cache"]) == (200, "hit")
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "overloaded")
    assert refused.headers["x-sluice-cache"] == "miss"


async def _received(engine: FakeEngine, count: int) -> bool:
    return len(engine.received) >= count


async def test_other_passthrough_routes_are_not_cached(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        answers = [await http.post("/tokenize", json={"model": "sim-model", "prompt": "hi"})
                   for _ in range(2)]
        assert await sim_handled(http, sim_server, "/tokenize") == 2
        assert await gateway_metric(http, gateway, "sluice_cache_lookups_total{") == 0
    assert all(a.status_code == 200 and "x-sluice-cache" not in a.headers for a in answers)


async def test_a_hit_counts_for_the_keys_rpm(start_sim: StartSim,
                                             start_gateway: StartGateway) -> None:
    sim = await start_sim()
    admin = "admin-" + "0123456789abcdef" * 2
    gateway = await start_gateway([sim], admin={"token": admin})
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        created = await http.post("/admin/keys", json={"name": "t", "rpm": 2},
                                  headers={"authorization": f"Bearer {admin}"})
        key = created.json()["key"]
        assert (await embed(http, BODY, key)).headers["x-sluice-cache"] == "miss"
        assert (await embed(http, BODY, key)).headers["x-sluice-cache"] == "hit"
        third = await http.post(PATH, json=BODY, headers={"authorization": f"Bearer {key}"})
        assert await sim_handled(http, sim, PATH) == 1
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
