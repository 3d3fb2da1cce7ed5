"""Mid-stream failover onto a real vLLM engine gives the answer vLLM would have given.

The first engine is a proxy in front of the real engine that relays the real answer and
dies mid-sentence (at a word boundary) after a few tokens. The gateway must continue the
stream on the real engine with the text sent so far as an open assistant message
(``continue_final_message: true, add_generation_prompt: false``). At temperature 0 the
client must then read, character for character, what the real engine answers to the
uninterrupted request: vLLM renders the continued message without closing the turn,
so generation resumes exactly where the dead engine stopped.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp import web
from openai import AsyncOpenAI

from loadtests.stack import RealStack
from tests.conftest import StartGateway
from tests.integration.fake_engine import FakeEngine

PROMPT = "Tell me a long story about a lighthouse keeper."
MAX_TOKENS = 40
CUT_AFTER = 8
"""Content events relayed before the proxy dies (at the next word boundary)."""


def _content(event: bytes) -> str:
    if not event.startswith(b"data: {"):
        return ""
    choices = orjson.loads(event[6:]).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


class DyingProxy:
    """Relays the real engine's stream, then drops the connection before the first
    token that starts a new word once ``CUT_AFTER`` content events went through."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.relayed: list[str] = []
        self.cut = False

    async def reply(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async with aiohttp.ClientSession() as session, \
                session.post(self.engine + request.path, json=body) as upstream:
            pending = b""
            async for data in upstream.content.iter_any():
                pending += data
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    piece = _content(event)
                    if piece.startswith(" ") and len(self.relayed) >= CUT_AFTER:
                        self.cut = True
                        assert request.transport is not None
                        request.transport.close()  # like a dead process: FIN mid-answer
                        return response
                    await response.write(event + b"\n\n")
                    if piece:
                        self.relayed.append(piece)
        return response


async def test_stream_broken_mid_answer_finishes_on_real_vllm_exactly(
        stack: RealStack, start_gateway: StartGateway) -> None:
    request = {"model": stack.model, "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": MAX_TOKENS, "temperature": 0}
    async with httpx.AsyncClient(timeout=120) as http:
        direct = await http.post(stack.engine + "/v1/chat/completions", json=request)
    assert direct.status_code == 200, direct.text
    reference = direct.json()["choices"][0]["message"]["content"]
    reference_tokens = direct.json()["usage"]["completion_tokens"]

    proxy = DyingProxy(stack.engine)
    doomed = FakeEngine(proxy.reply, model=stack.model)
    await doomed.start()
    try:
        gateway = await start_gateway([doomed.url, stack.engine],
                                      routing={"default": {"strategy": "round_robin"}})
        client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0,
                             timeout=120)
        stream = await client.chat.completions.create(
            model=stack.model, messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS, temperature=0, stream=True,
            stream_options={"include_usage": True})
        ids, pieces, usage = set(), [], None
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        async with httpx.AsyncClient(timeout=30) as http:
            metrics = (await http.get(gateway + "/metrics")).text
    finally:
        await doomed.close()

    assert proxy.cut, "the real answer ended before the proxy's cut"
    assert len(doomed.received) == 1
    continued = [line for line in metrics.splitlines()
                 if line.startswith("sluice_failovers_total{") and 'outcome="continued"' in line]
    assert len(continued) == 1
    assert float(continued[0].rsplit(" ", 1)[1]) == 1, continued
    assert len(ids) == 1
    text = "".join(pieces)
    assert text.startswith("".join(proxy.relayed))
    assert text == reference
    assert usage is not None
    assert usage.completion_tokens == reference_tokens
