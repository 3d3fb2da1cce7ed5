"""A request, however it ends, leaves no reference cycle that holds its context (and so
its body): it is freed when it ends, not at some later full garbage collection, which an
idle gateway never runs. A real gateway on a socket, in this process, in front of a
:class:`FakeEngine`; over HTTP and over ``/v1/ws``.

The garbage collector is off while the request runs, so a cycle cannot be collected
before it is looked for; then one collection with ``DEBUG_SAVEALL`` keeps whatever it
found unreachable in ``gc.garbage``, where no :class:`RequestContext` may be.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from gateway.core.context import RequestContext
from tests.conftest import StartGateway
from tests.integration.conftest import StartFakeEngine
from tests.integration.fake_engine import Reply, chat_chunk, error_reply, raw_reply

BODY = {"model": "sim-model", "max_tokens": 5, "stream": True,
        "messages": [{"role": "user", "content": "x" * 100_000}]}
DONE = b"data: [DONE]\n\n"
REPLIES: dict[str, Reply] = {
    "answered": raw_reply(chat_chunk("c1", "Hi", finish_reason="stop"), DONE),
    "refused": error_reply(400, {"message": "maximum context length exceeded",
                                 "type": "BadRequestError", "code": 400}),
    "broken_mid_stream": raw_reply(chat_chunk("c1", "Hi"), b"data: {oops\n\n", DONE),
}
CASES = [
    "answered", "refused",
    "broken_mid_stream",
]


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def contexts_in_cycles() -> int:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = sum(isinstance(thing, RequestContext) for thing in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    return found


async def over_http(gateway: str) -> str:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=BODY)
    return str(response.status_code)


async def over_ws(gateway: str) -> str:
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(gateway.replace("http", "ws", 1) + "/v1/ws") as ws:
        await ws.send_json({"id": "a", "type": "chat.completions", "body": BODY})
        while (message := await ws.receive_json(timeout=10))["type"] == "chunk":
            pass
    return str(message["type"])


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.usefixtures("collector_off")
async def test_a_request_leaves_no_cycle_holding_its_context(
        start_fake_engine: StartFakeEngine, start_gateway: StartGateway,
        transport: str, case: str) -> None:
    engine = await start_fake_engine(REPLIES[case])
    gateway = await start_gateway([engine.url])
    ended = await (over_http if transport == "http" else over_ws)(gateway)
    assert ended in {"200", "400", "done", "error"}
    assert contexts_in_cycles() == 0
