"""The log lines of a real `sluice serve` process: every line of a request carries its
id, JSON has no ANSI, the access line says where a request went, probes are at debug."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from loadtests.launch import free_port
from simulator import SimConfig
from tests.integration.conftest import StartSim

CHAT = {"model": "sim-model", "max_tokens": 3, "stream": True,
        "messages": [{"role": "user", "content": "hello"}]}


async def serve_and_log(tmp_path: Path, sim: str, *flags: str) -> list[str]:
    """Run a gateway with ``flags``: one chat request (id ``req-logs-1``), one probe; its
    stderr lines once it stopped."""
    port = free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump({"port": port, "default_engine": False,
                                      "engines": [{"name": "sim", "url": sim}],
                                      "drain": {"delay_s": 0}}))
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220 - stopped below, killed if it hangs
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), *flags],
            stdout=subprocess.DEVNULL, stderr=sink)
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http, asyncio.timeout(30):
            while True:
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            answer = await http.post("/v1/chat/completions", json=CHAT,
                                     headers={"x-request-id": "req-logs-1"})
            assert answer.status_code == 200
            await http.get("/health")
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return stderr.read_text().splitlines()


async def test_json_lines_of_a_request_carry_its_id_and_no_ansi(
        tmp_path: Path, start_sim: StartSim) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    lines = await serve_and_log(tmp_path, sim, "--log-format", "json",
                                   "--log-level", "debug")
    entries: list[dict[str, Any]] = [orjson.loads(line) for line in lines]  # all JSON
    assert not [line for line in lines if "\x1b" in line or "color_message" in line]
    mine = [e for e in entries if e.get("request_id") == "req-logs-1"]
    assert [e for e in entries if "req-logs-1" in e["msg"]]  # the director's line ...
    assert all(e.get("request_id") == "req-logs-1"  # ... carries the id as a field
               for e in entries if "req-logs-1" in e["msg"])
    assert len(mine) >= 2
    [access] = [e for e in mine if e["logger"] == "sluice.access"]
    assert access["level"] == "info"
    assert access["model"] == "sim-model"
    assert access["engine"] == "sim"
    assert access["outcome"] == "200"
    assert access["tokens"] > 0
    assert access["ttft_ms"] > 0
    assert access["version"] is None
    [probe] = [e for e in entries if e["logger"] == "sluice.access"
               and e.get("path") == "/health"]
    assert probe["level"] == "debug"
    assert "request_id" in probe


async def test_text_lines_at_info_leave_probes_out(
        tmp_path: Path, start_sim: StartSim) -> None:
    sim = await start_sim(SimConfig(prefill_base_ms=1, decode_step_ms=1))
    lines = await serve_and_log(tmp_path, sim, "--log-format", "text")
    access = [line for line in lines if " sluice.access " in line]
    assert len(access) == 1  # the chat request's; not /ready's nor /health's
    assert " INFO    sluice.access [req-logs-1] request " in access[0]
    assert "model=sim-model" in access[0]
    assert "engine=sim" in access[0]
    assert not [line for line in lines if line.startswith("{")]
    assert not [line for line in lines if "\x1b" in line]
