"""SIGTERM and SIGINT to a real `sluice serve` process: the drain timeline.

SIGTERM: ``/ready`` answers 503 for ``drain.delay_s`` while everything that arrives is
served; then new connections are refused and what is in flight (streams, WebSocket
sessions) gets ``drain.timeout_s`` to finish; then the process exits "terminated by
SIGTERM". SIGINT skips the delay.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import yaml

from loadtests.launch import free_port
from simulator import SimConfig
from tests.integration.helpers import wait_until

Serve = Callable[..., "asyncio.Future[tuple[subprocess.Popen[bytes], str]]"]
STREAM = {"model": "sim-model", "stream": True, "max_tokens": 30,
          "messages": [{"role": "user", "content": "count slowly"}]}
SHORT = {"model": "sim-model", "max_tokens": 2,
         "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """``await serve(sim_url, delay_s=..., timeout_s=...)``: a gateway process and its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    async def start(sim: str, *, delay_s: float,
                    timeout_s: float) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = tmp_path / f"gateway-{port}.yaml"
        config.write_text(yaml.safe_dump({
            "port": port, "default_engine": False, "access_log": False,
            "engines": [{"name": "sim", "url": sim}],
            "drain": {"delay_s": delay_s, "timeout_s": timeout_s}}))
        process = subprocess.Popen(  # noqa: ASYNC220 - kept as Popen so teardown can kill it
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http, asyncio.timeout(30):
            while True:
                try:
                    if (await http.get(url + "/ready")).status_code == 200:
                        return process, url
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


async def _exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    return await asyncio.to_thread(process.wait, timeout_s)


async def _read_stream(url: str, started: asyncio.Event) -> list[str]:
    """One streamed chat read to its end; ``started`` is set at its first bytes."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        body = b""
        async for data in response.aiter_bytes():
            body += data
            started.set()
    return [e for e in body.decode().split("\n\n") if e]


def _whole(events: list[str]) -> bool:
    """A stream that ended with [DONE], no error, and all 30 tokens."""
    return (events[-1] == "data: [DONE]" and not [e for e in events if '"error"' in e]
            and len([e for e in events if '"content":"' in e
                     and '"content":""' not in e]) == 30)


async def _refused(url: str) -> bool:
    """A new connection is no longer served: refused, or (one the kernel completed just
    before the listener closed, still in its accept queue) closed unanswered."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            await http.get(url + "/health")
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        return True
    return False


async def _when_refused(url: str, within_s: float) -> float:
    """The monotonic time a new connection is first refused (polled)."""
    await wait_until(lambda: _refused(url), "new connections to be refused", within_s)
    return time.monotonic()


async def test_sigterm_serves_through_the_delay_then_drains(start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=120))  # ~3.6 s stream
    delay_s = 2.5
    process, url = await serve(sim, delay_s=delay_s, timeout_s=20)
    started = asyncio.Event()
    stream = asyncio.create_task(_read_stream(url, started))
    await asyncio.wait_for(started.wait(), 10)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    ready, answered = [], []
    async with httpx.AsyncClient(base_url=url, timeout=5) as kept_alive:
        while time.monotonic() < signalled + delay_s - 0.4:
            ready.append((await kept_alive.get("/ready")).status_code)
            answered.append((await kept_alive.post("/v1/chat/completions",
                                                   json=SHORT)).status_code)
            async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:  # new connection
                answered.append((await fresh.post("/v1/chat/completions",
                                                  json=SHORT)).status_code)
            await asyncio.sleep(0.05)
    refused_at = await _when_refused(url, delay_s + 3)
    open_when_refused = not stream.done()
    events = await stream
    assert len(ready) >= 2
    assert set(ready) == {503}  # not ready from the signal on ...
    assert set(answered) == {200}  # ... yet everything that came was served
    assert refused_at - signalled >= delay_s - 0.1  # the listener closed after the delay
    assert open_when_refused
    assert _whole(events)  # the stream in flight through the stop finished whole
    # uvicorn re-raises the signal once shut down, so the exit reads "terminated by SIGTERM".
    assert await _exit_code(process, 15) == -signal.SIGTERM


async def test_sigint_skips_the_delay_and_still_drains(start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=60))  # ~1.8 s stream
    process, url = await serve(sim, delay_s=30, timeout_s=20)
    started = asyncio.Event()
    stream = asyncio.create_task(_read_stream(url, started))
    await asyncio.wait_for(started.wait(), 10)
    process.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    refused_at = await _when_refused(url, 5)
    events = await stream
    assert refused_at - signalled < 2
    assert _whole(events)
    assert await _exit_code(process, 15) == 0


async def test_drain_deadline_ends_streams_with_an_error_event(start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=100))  # ~3 s stream
    process, url = await serve(sim, delay_s=0, timeout_s=0.5)
    started = asyncio.Event()
    stream = asyncio.create_task(_read_stream(url, started))
    await asyncio.wait_for(started.wait(), 10)
    process.send_signal(signal.SIGTERM)
    events = await stream
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["code"] == "shutting_down"
    assert await _exit_code(process, 15) == -signal.SIGTERM


def _ws_request(request_id: str, max_tokens: int) -> dict[str, Any]:
    return {"id": request_id, "type": "chat.completions",
            "body": {**STREAM, "max_tokens": max_tokens}}


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages = []
    async for message in ws:
        messages.append(orjson.loads(message.data))
    return messages


async def test_websocket_sessions_are_drained_and_closed_going_away(start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=60))  # ~1.8 s stream
    process, url = await serve(sim, delay_s=1.0, timeout_s=20)
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(url + "/v1/ws") as busy, client.ws_connect(url + "/v1/ws") as idle:
        await busy.send_json(_ws_request("early", 30))
        assert (await busy.receive_json(timeout=10))["type"] == "chunk"
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        await idle.send_json(_ws_request("in-delay", 2))  # served during the delay
        idle_messages = await _until_closed(idle)
        busy_messages = await _until_closed(busy)
    assert [m["type"] for m in idle_messages if m["type"] != "chunk"] == ["done"]
    assert idle.close_code == 1001  # closed going away once the drain began, not cut
    assert busy_messages[-1]["type"] == "done"  # the request in flight finished
    assert len([m for m in busy_messages if m["type"] == "chunk"]) >= 29
    assert busy.close_code == 1001
    assert await _exit_code(process, 15) == -signal.SIGTERM


async def test_realtime_session_lasts_until_the_deadline_then_goes_away(
        start_sim, serve) -> None:
    sim = await start_sim()
    process, url = await serve(sim, delay_s=0, timeout_s=1.0)
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(url + "/v1/realtime?model=sim-model") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session.created"
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.5)
        await ws.send_json({"type": "input_audio_buffer.commit"})  # still relayed
        relayed = await ws.receive_json(timeout=5)
        closing = await ws.receive(timeout=10)
        closed_after = time.monotonic() - signalled
    assert relayed["type"] in ("transcription.done", "error")
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1001
    assert closed_after >= 0.9
    assert await _exit_code(process, 15) == -signal.SIGTERM
