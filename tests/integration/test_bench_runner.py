"""The load-test runner and client against the simulator (and small fakes) on real sockets."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loadtests import runner
from loadtests.arrivals import ConcurrencyArrival, ConstantArrival, PoissonArrival
from loadtests.client import open_session, stream_chat, stream_request
from loadtests.records import RequestRecord, RunResult, StreamRecord
from loadtests.runner import Scenario, run, sweep
from loadtests.workloads import (
    LoraMixWorkload,
    MultiTurnWorkload,
    RandomWorkload,
    SharedPrefixWorkload,
)
from simulator import SimConfig
from tests.conftest import StartGateway, free_port

StartSim = Callable[..., Awaitable[str]]
PREFILL_MS = 30.0


def max_in_flight(records: list[RequestRecord]) -> int:
    events = sorted([(r.start, 1) for r in records] + [(r.end or r.start, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    return max(itertools.accumulate(delta for _, delta in events))


def series(result: RunResult, name: str) -> list[float]:
    return [s.value for s in result.series if s.name == name]


async def test_short_run_records_every_token(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(prefill_base_ms=PREFILL_MS, decode_step_ms=2.0))
    scenario = Scenario(workload=RandomWorkload(input_len=(20, 40), output_len=8),
                        arrival=PoissonArrival(rate=40), num_requests=30, seed=5)
    result = await run("direct", url, scenario, progress=False)
    assert result.target == "direct"
    assert result.base_url == url
    assert result.scenario["arrival"] == {"kind": "poisson", "rate": 40.0}
    assert result.started_at.endswith("+00:00")
    assert [r.index for r in result.records] == list(range(30))
    for record in result.records:
        assert record.ok, record.error
        assert record.completion_tokens == 8
        assert len(record.chunk_times) == 8
        assert record.chunk_times == sorted(record.chunk_times)
        assert record.ttft is not None
        assert record.ttft >= PREFILL_MS / 1000
        assert record.model == "sim-model"
        assert 20 <= record.prompt_tokens - 7 <= 40  # chat template: 4 + 3 tokens here
    starts = [r.start for r in result.records]
    assert starts == sorted(starts)
    last_end = max(r.end or 0 for r in result.records)
    assert result.duration_s == pytest.approx(last_end - starts[0])


async def test_completions_endpoint(start_sim: StartSim) -> None:
    url = await start_sim()
    workload = SharedPrefixWorkload(endpoint="completions", n_prefixes=2, m_suffixes=3,
                                    prefix_len=32, suffix_len=4, output_len=6)
    scenario = Scenario(workload=workload, arrival=ConcurrencyArrival(concurrency=2),
                        num_requests=100)
    result = await run("direct", url, scenario, progress=False)
    assert len(result.records) == 6  # the workload ends first
    assert all(r.ok and len(r.chunk_times) == r.completion_tokens == 6 for r in result.records)
    assert all(r.prompt_tokens == 37 for r in result.records)  # BOS + 32 + 4


async def test_multi_turn_later_turns_carry_earlier_answers(start_sim: StartSim) -> None:
    url = await start_sim()
    workload = MultiTurnWorkload(users=3, turns=3, first_len=20, turn_len=5, output_len=6)
    scenario = Scenario(workload=workload, arrival=PoissonArrival(rate=100), num_requests=50)
    result = await run("direct", url, scenario, progress=False)
    assert len(result.records) == 9
    assert all(r.ok for r in result.records)
    by_user: dict[str | None, list[RequestRecord]] = {}
    for record in result.records:
        by_user.setdefault(record.session, []).append(record)
    assert set(by_user) == {"user-0", "user-1", "user-2"}
    for turns in by_user.values():
        assert [r.turn for r in turns] == [0, 1, 2]
        assert turns[0].prompt_tokens == 20 + 4 + 3
        for earlier, later in itertools.pairwise(turns):
            assert later.start >= (earlier.end or float("inf"))  # sent after the answer
            # the answer (6 tokens + 4 template) and the new user message (5 + 4) were added
            assert later.prompt_tokens - earlier.prompt_tokens == 6 + 4 + 5 + 4


async def test_concurrency_limit_is_never_exceeded(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(prefill_base_ms=2.0, decode_step_ms=4.0))
    scenario = Scenario(workload=RandomWorkload(input_len=10, output_len=(5, 15)),
                        arrival=ConcurrencyArrival(concurrency=3), num_requests=24)
    result = await run("direct", url, scenario, scrape_urls=[url], scrape_interval_s=0.01,
                       progress=False)
    assert all(r.ok for r in result.records)
    assert max_in_flight(result.records) == 3
    running = series(result, "vllm:num_requests_running")
    assert running
    assert max(running) <= 3


async def test_duration_bound_stops_sending(start_sim: StartSim) -> None:
    url = await start_sim()
    scenario = Scenario(workload=RandomWorkload(input_len=10, output_len=4),
                        arrival=ConstantArrival(rate=20), duration_s=1.0)
    began = time.monotonic()
    result = await run("direct", url, scenario, progress=False)
    assert time.monotonic() - began < 3.0
    assert 19 <= len(result.records) <= 21
    assert all(r.ok for r in result.records)
    assert max(r.start for r in result.records) < 1.0 + 0.05


async def test_hanging_target_is_drained_then_cancelled_as_timeout(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(hang=True))
    scenario = Scenario(workload=RandomWorkload(input_len=10, output_len=4),
                        arrival=PoissonArrival(rate=50), duration_s=0.3,
                        drain_timeout_s=0.3, request_timeout_s=60)
    began = time.monotonic()
    result = await run("direct", url, scenario, progress=False)
    assert time.monotonic() - began < 2.0
    assert result.records
    assert {r.error for r in result.records} == {"timeout"}
    assert all(r.end is None for r in result.records)


async def test_request_timeout(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(hang=True))
    scenario = Scenario(workload=RandomWorkload(input_len=10, output_len=4),
                        arrival=ConcurrencyArrival(concurrency=2), num_requests=2,
                        request_timeout_s=0.2)
    result = await run("direct", url, scenario, progress=False)
    assert [r.error for r in result.records] == ["timeout", "timeout"]


async def test_dead_port_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=4),
                        arrival=PoissonArrival(rate=100), num_requests=3)
    result = await run("dead", url, scenario, scrape_urls=[url], progress=False)
    assert [r.error for r in result.records] == ["connection"] * 3
    assert result.series == []


async def test_engine_errors_and_crash_are_recorded(start_sim: StartSim) -> None:
    failing = await start_sim(SimConfig(error_rate=1.0))
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=20),
                        arrival=ConcurrencyArrival(concurrency=1), num_requests=2)
    result = await run("direct", failing, scenario, progress=False)
    assert [r.error for r in result.records] == ["http_500", "http_500"]
    crashing = await start_sim(SimConfig(prefill_base_ms=1.0, decode_step_ms=5.0,
                                         crash_after_tokens=5))
    result = await run("direct", crashing, scenario, progress=False)
    assert result.records[0].error == "disconnected"
    assert len(result.records[0].chunk_times) == 5
    assert result.records[1].error == "connection"


async def test_scrape_series_cover_the_run(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(prefill_base_ms=5.0, decode_step_ms=5.0))
    scenario = Scenario(workload=RandomWorkload(input_len=40, output_len=20),
                        arrival=ConcurrencyArrival(concurrency=4), num_requests=12)
    result = await run("direct", url, scenario, scrape_urls=[url + "/"],
                       scrape_interval_s=0.02, progress=False)
    running = [s for s in result.series if s.name == "vllm:num_requests_running"]
    assert len(running) >= 5
    assert {s.source for s in running} == {url + "/"}
    assert max(s.value for s in running) == 4
    assert running[-1].value == 0  # the last scrape comes after the drain
    assert [s.t for s in running] == sorted(s.t for s in running)
    generated = series(result, "vllm:generation_tokens_total")
    assert generated[-1] == 12 * 20
    assert series(result, 'vllm:time_to_first_token_seconds_bucket{le="+Inf"}')[-1] == 12
    assert series(result, "vllm:prefix_cache_queries_total")


async def test_warmup_is_sent_but_not_recorded(start_sim: StartSim) -> None:
    url = await start_sim()
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=3),
                        arrival=PoissonArrival(rate=200), num_requests=5, warmup_requests=4)
    result = await run("direct", url, scenario, scrape_urls=[url], progress=False)
    assert len(result.records) == 5
    assert series(result, "vllm:generation_tokens_total")[0] == 4 * 3  # warm-up, before t=0
    assert series(result, "vllm:generation_tokens_total")[-1] == 9 * 3


async def test_sweep_runs_each_level(start_sim: StartSim) -> None:
    url = await start_sim()
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=3),
                        arrival=ConcurrencyArrival(concurrency=1), num_requests=6,
                        levels=[1, 3])
    results = await sweep("direct", url, scenario, progress=False)
    assert [r.level for r in results] == [1, 3]
    assert [r.scenario["arrival"]["concurrency"] for r in results] == [1, 3]
    assert [max_in_flight(r.records) for r in results] == [1, 3]
    with pytest.raises(ValueError, match="whole number"):
        await sweep("direct", url, scenario, levels=[2, 2.5], progress=False)


async def test_lora_mix_and_repeats_against_the_simulator(start_sim: StartSim) -> None:
    url = await start_sim()
    async with aiohttp.ClientSession() as http:
        load = {"lora_name": "adapter-a", "lora_path": "/adapters/a"}
        async with http.post(url + "/v1/load_lora_adapter", json=load) as response:
            assert response.status == 200
    workload = LoraMixWorkload(workload=RandomWorkload(input_len=8, output_len=4),
                               models={"sim-model": 1, "adapter-a": 1}, repeat_rate=0.3)
    scenario = Scenario(workload=workload, arrival=PoissonArrival(rate=200), num_requests=40)
    result = await run("direct", url, scenario, progress=False)
    assert all(r.ok and r.completion_tokens == 4 for r in result.records)
    assert {r.model for r in result.records} == {"sim-model", "adapter-a"}


async def test_through_the_gateway(start_sim: StartSim, start_gateway: StartGateway) -> None:
    engine = await start_sim()
    gateway = await start_gateway(engines=[engine])
    scenario = Scenario(workload=RandomWorkload(input_len=16, output_len=5),
                        arrival=ConcurrencyArrival(concurrency=4), num_requests=12)
    result = await run("gateway", gateway, scenario, scrape_urls=[gateway, engine],
                       scrape_interval_s=0.05, progress=True)
    assert all(r.ok and len(r.chunk_times) == 5 for r in result.records)
    assert series(result, "sluice_requests_in_flight")
    assert series(result, "sluice_time_to_first_token_seconds_count")[-1] == 12
    assert {s.source for s in result.series} == {gateway, engine}


# --- the client against hand-written streams -------------------------------------------

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":" hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
STREAMS: dict[str, bytes] = {
    "ok": CHUNK + b": keep-alive\n\n" + CHUNK + USAGE + b"data: [DONE]\n\n",
    "stream_error": CHUNK + b'data: {"error":{"message":"engine died","code":502}}\n\n',
    "no_usage": CHUNK + CHUNK + b"data: [DONE]\n\n",
    "no_done": CHUNK + USAGE,
    "bad_event": CHUNK + b"data: {not json\n\n",
}
ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
CHAT_STREAMS: dict[str, bytes] = {
    **STREAMS,
    "error_then_done": ROLE + CHUNK + b'data: {"error":{"message":"engine died"}}\n\n'
                       + b"data: [DONE]\n\n",
}
CHAT_ENDINGS: dict[str, tuple[str | None, bool, str | None, int | None]] = {
    # name: (failure, done, error_event, usage_tokens)
    "ok": (None, True, None, 2),
    "stream_error": ("no_done", False, "engine died", None),  # reading goes on past it
    "no_usage": (None, True, None, None),
    "no_done": ("no_done", False, None, 2),
    "bad_event": ("bad_event", False, None, None),
    "error_then_done": (None, True, "engine died", None),
}


@pytest.fixture
async def fake_server() -> AsyncIterator[str]:
    """``POST /<name>`` and ``POST /<name>/v1/chat/completions`` answer
    ``CHAT_STREAMS[name]``, one write per event; ``/status/<code>/...`` answers that
    status."""
    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "status":
            return web.Response(status=int(request.match_info["status"]), text="no")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in CHAT_STREAMS[name].split(b"\n\n")[:-1]:
            await response.write(part + b"\n\n")  # one write per event
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{name}", handle)
    app.router.add_post("/{name}/v1/chat/completions", handle)
    app.router.add_post("/{name}/{status}/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("name", list(STREAMS))
async def test_client_maps_stream_endings(fake_server: str, name: str) -> None:
    record = RequestRecord(index=0, start=0.0)
    session = open_session(4, 5.0)
    try:
        body: dict[str, Any] = {"stream": True}
        text = await stream_request(session, f"{fake_server}/{name}", body, record,
                                    origin=time.perf_counter(), timeout_s=5.0, keep_text=True)
    finally:
        await session.close()
    expected_error = None if name == "ok" else name
    assert record.error == expected_error
    assert record.end is not None
    assert record.start <= record.end
    assert len(record.chunk_times) == STREAMS[name].count(CHUNK)
    if name == "ok":
        assert text == " hi hi"
        assert (record.prompt_tokens, record.completion_tokens) == (3, 2)
        assert record.ok
    else:
        assert text is None


@pytest.mark.parametrize("name", list(CHAT_ENDINGS))
async def test_chat_client_keeps_every_token_and_reads_past_error_events(
        fake_server: str, name: str) -> None:
    record = StreamRecord(0, "hi", 2)
    async with open_session(4, 5.0) as session:
        await stream_chat(session, f"{fake_server}/{name}", "m", record,
                          origin=time.perf_counter(), timeout_s=5.0)
    failure, done, error_event, usage_tokens = CHAT_ENDINGS[name]
    assert (record.failure, record.done, record.error_event, record.usage_tokens) == (
        failure, done, error_event, usage_tokens)
    assert record.tokens == [" hi"] * CHAT_STREAMS[name].count(CHUNK)
    assert len(record.token_times) == len(record.tokens)
    assert record.role_events == (1 if name == "error_then_done" else 0)
    assert record.end is not None
    assert record.start <= record.end


async def test_chat_client_names_refused_and_failed_requests(fake_server: str) -> None:
    async with open_session(4, 5.0) as session:
        refused = StreamRecord(0, "hi", 2)
        await stream_chat(session, f"{fake_server}/status/503", "m", refused,
                          origin=time.perf_counter(), timeout_s=5.0)
        closed = StreamRecord(1, "hi", 2)
        await stream_chat(session, f"http://127.0.0.1:{free_port()}", "m", closed,
                          origin=time.perf_counter(), timeout_s=5.0)
    assert (refused.failure, refused.done, refused.tokens) == ("http_503", False, [])
    assert (closed.failure, closed.done) == ("connection", False)
    assert closed.end is not None


async def test_run_has_no_leftover_tasks(start_sim: StartSim) -> None:
    url = await start_sim()
    before = asyncio.all_tasks()
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=2),
                        arrival=PoissonArrival(rate=500), num_requests=10)
    await run("direct", url, scenario, scrape_urls=[url], progress=False)
    left = [getattr(t.get_coro(), "cr_code", None) for t in asyncio.all_tasks() - before]
    assert [code for code in left if code and "loadtests" in code.co_filename] == []


async def test_cancelling_a_run_cancels_its_requests(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(hang=True))
    before = asyncio.all_tasks()
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=2),
                        arrival=ConcurrencyArrival(concurrency=5), duration_s=60,
                        drain_timeout_s=60, request_timeout_s=60)
    running = asyncio.create_task(run("direct", url, scenario, scrape_urls=[url],
                                      progress=False))
    await asyncio.sleep(0.2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    left = [getattr(t.get_coro(), "cr_code", None) for t in asyncio.all_tasks() - before]
    assert [code for code in left if code and "loadtests" in code.co_filename] == []


async def test_a_client_bug_is_recorded_not_hidden(
    start_sim: StartSim, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = await start_sim()

    async def broken(*args: Any, **kwargs: Any) -> str | None:
        raise RuntimeError("bug")

    monkeypatch.setattr(runner, "stream_request", broken)
    scenario = Scenario(workload=RandomWorkload(input_len=4, output_len=2),
                        arrival=PoissonArrival(rate=100), num_requests=2)
    result = await run("direct", url, scenario, progress=False)
    assert [r.error for r in result.records] == ["client_error", "client_error"]
    assert "failed in the client" in caplog.text
