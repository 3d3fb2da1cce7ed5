"""SIGTERM to a real `sluice serve` process: in-flight streams finish, then it exits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from loadtests.launch import free_port
from simulator import SimConfig

Serve = Callable[..., "asyncio.Future[tuple[subprocess.Popen[bytes], str]]"]
STREAM = {"model": "sim-model", "stream": True, "max_tokens": 30,
          "messages": [{"role": "user", "content": "count slowly"}]}


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """``await serve(sim_url, drain_timeout_s=...)``: a gateway process and its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    async def start(sim: str, drain_timeout_s: float) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = tmp_path / f"gateway-{port}.yaml"
        config.write_text(yaml.safe_dump({
            "port": port, "default_engine": False, "access_log": False,
            "engines": [{"name": "sim", "url": sim}],
            "resilience": {"drain_timeout_s": drain_timeout_s}}))
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


async def _stream_through_sigterm(process: subprocess.Popen[bytes], url: str) -> list[str]:
    """Start a stream, SIGTERM the gateway after its first bytes, read it to the end."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        chunks = response.aiter_bytes()
        body = await anext(chunks)
        process.send_signal(signal.SIGTERM)
        async for data in chunks:
            body += data
    return [e for e in body.decode().split("\n\n") if e]


async def test_sigterm_lets_a_stream_finish_and_refuses_new_connections(
        start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=40))  # ~1.2 s stream
    process, url = await serve(sim, drain_timeout_s=20)
    events = await _stream_through_sigterm(process, url)
    async with httpx.AsyncClient(timeout=2.0) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(url + "/ready")
    assert events[-1] == "data: [DONE]"
    assert not [e for e in events if '"error"' in e]
    assert len([e for e in events if '"content":"' in e and '"content":""' not in e]) == 30
    # uvicorn re-raises the signal once shut down, so the exit reads "terminated by SIGTERM".
    assert await _exit_code(process, 15) == -signal.SIGTERM


async def test_drain_deadline_ends_streams_with_an_error_event(start_sim, serve) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=100))  # ~3 s stream
    process, url = await serve(sim, drain_timeout_s=0.5)
    events = await _stream_through_sigterm(process, url)
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["code"] == "shutting_down"
    # uvicorn re-raises the signal once shut down, so the exit reads "terminated by SIGTERM".
    assert await _exit_code(process, 15) == -signal.SIGTERM
