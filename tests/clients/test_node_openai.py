"""The official ``openai`` npm package under Node, through the gateway to a simulator:
streaming with usage, an AbortController that frees the engine's slot, an invalid field
as ``BadRequestError``, and the Responses API streamed.

Each test runs ``node tests/clients/node/clients.mjs <scenario> ...`` and reads the one
JSON object it prints. ``make node-clients`` installs the package (``npm ci``)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.clients.conftest import MODEL, Through
from tests.integration.helpers import gateway_metric, sim_queued, wait_until

pytestmark = pytest.mark.clients

PROJECT = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the project's packages installed."""
    found = shutil.which("node")
    message = None
    if found is None:
        message = "node is not installed"
    elif not (PROJECT / "node_modules" / "openai").is_dir():
        message = f"{PROJECT}/node_modules is missing: run `make node-clients`"
    if message is not None:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert found is not None
    return found


async def run_node(node: str, scenario: str, through: Through) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        node, str(PROJECT / "clients.mjs"), scenario, through.base_url, MODEL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


async def test_node_client_streams_with_usage(node: str, through: Through) -> None:
    result = await run_node(node, "stream", through)
    assert len(result["pieces"]) == 8
    assert result["usage"]["completion_tokens"] == 8


async def test_node_abort_controller_frees_the_engine_slot(node: str,
                                                           through: Through) -> None:
    result = await run_node(node, "abort", through)
    assert result["seen"] == 3
    assert result["aborted"] is True
    async with httpx.AsyncClient(timeout=10) as http:
        async def idle() -> bool:
            return await sim_queued(http, through.sim) == 0
        await wait_until(idle, "the engine to drop the aborted request")
        disconnects = await gateway_metric(http, through.url,
                                           'sluice_client_disconnects_total{model="sim-model",version="none"}')
    assert disconnects == 1


async def test_node_invalid_field_is_a_bad_request_error(node: str, through: Through) -> None:
    result = await run_node(node, "bad-request", through)
    assert result["status"] == 400
    assert result["bad_request"] is True
    assert result["param"] == "max_tokens"  # a field the gateway acts on


async def test_node_responses_api_streamed(node: str, through: Through) -> None:
    assert through.serves("/v1/responses")
    result = await run_node(node, "responses", through)
    assert result["types"][0] == "response.created"
    assert result["types"][-1] == "response.completed"
    assert result["text"]
