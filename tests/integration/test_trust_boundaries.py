"""What a hostile caller can do, each finding shown refused (the trust-boundary findings:
huge integers, echoed names, request ids, log excerpts, redirects)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartGateway

HUGE = 2**70
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2, "temperature": 0}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
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
