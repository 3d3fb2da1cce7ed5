"""A client that leaves right after ``data: [DONE]`` had the whole answer: it is a 200,
not a disconnect (499). A stream past ``total_s`` ending with an error event that says
so is tested in ``test_breaker_semantics.py``
(``test_a_stream_past_total_s_ends_saying_so_and_is_not_continued``)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import orjson

from tests.conftest import StartGateway
from tests.integration.conftest import StartSim
from tests.integration.helpers import metric, wait_until

ROUNDS = 50
BODY = orjson.dumps({"model": "sim-model", "stream": True, "max_tokens": 3,
                     "messages": [{"role": "user", "content": "hi"}]})


async def read_to_done_and_leave(host: str, port: int, *, reset: bool) -> None:
    """POST a stream over a raw socket; hang up as soon as ``[DONE]`` is in (with a
    reset, or an orderly close), without reading the end of the chunked body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
    await writer.drain()
    seen = b""
    async with asyncio.timeout(20):
        while b"data: [DONE]" not in seen:
            data = await reader.read(65536)
            assert data, seen
            seen += data
    assert seen.startswith(b"HTTP/1.1 200 ")
    if reset:
        writer.transport.abort()
    else:
        writer.close()
        await writer.wait_closed()


async def test_a_client_leaving_right_after_done_is_not_a_disconnect(
        start_sim: StartSim, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([await start_sim()])
    url = urlsplit(gateway)
    assert url.hostname is not None
    assert url.port is not None
    for i in range(ROUNDS):
        await read_to_done_and_leave(url.hostname, url.port, reset=bool(i % 2))
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        async def all_counted() -> bool:
            page = (await http.get("/metrics")).text
            return metric(page, "sluice_requests_total{") >= ROUNDS

        await wait_until(all_counted, "every request to be counted")
        page = (await http.get("/metrics")).text
    ok = ('sluice_requests_total{endpoint="chat",engine="e0",model="sim-model",status="200",'
          'version="none"}')
    assert metric(page, ok) == ROUNDS
    assert 'status="499"' not in page
    assert metric(page, "sluice_client_disconnects_total") == 0
