"""A page served from another origin (a small static server on another port) streams
an answer from the gateway: over SSE with fetch (the JSON POST needs a CORS preflight)
and over the WebSocket (browsers send an Origin, which the gateway checks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Page
from starlette.routing import WebSocketRoute

from tests.integration.conftest import FAST_SIM

pytestmark = pytest.mark.browser

CHAT = {"model": "sim-model", "max_tokens": 6, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello"}]}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title>
<script>
async function sseAnswer(gateway, body) {
  const response = await fetch(gateway + "/v1/chat/completions", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let raw = "", reads = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    raw += value;
    reads += 1;
  }
  const events = raw.split("\\n\\n").filter((e) => e.startsWith("data: "))
    .map((e) => e.slice(6));
  const chunks = events.filter((e) => e !== "[DONE]").map((e) => JSON.parse(e));
  return {
    status: response.status, reads, last: events[events.length - 1],
    text: chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || "").join(""),
    usage: chunks[chunks.length - 1].usage,
    engine: response.headers.get("x-sluice-engine"),
  };
}

function wsAnswer(gateway, body) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(gateway.replace(/^http/, "ws") + "/v1/ws", ["sluice"]);
    const chunks = [];
    ws.onopen = () => ws.send(JSON.stringify({id: "a1", type: "chat.completions", body}));
    ws.onerror = () => reject(new Error("the WebSocket failed"));
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "chunk") {
        chunks.push(message.data);
        return;
      }
      ws.close();
      resolve({
        end: message.type, id: message.id, protocol: ws.protocol, usage: message.usage,
        error: message.error,
        text: chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || "").join(""),
      });
    };
  });
}
</script></head><body>another origin</body></html>
"""


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """``http://127.0.0.1:<port>``: a static server on its own port, serving ``PAGE``."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_page_from_another_origin_streams_over_sse(page: Page, other_origin: str,
                                                           start_sim, start_gateway) -> None:
    gateway = await start_gateway([await start_sim(FAST_SIM)])
    assert gateway.rsplit(":", 1)[1] != other_origin.rsplit(":", 1)[1]
    await page.goto(other_origin + "/")
    result: dict[str, Any] = await page.evaluate("([g, b]) => sseAnswer(g, b)",
                                                 [gateway, CHAT])
    assert result["status"] == 200
    assert result["last"] == "[DONE]"
    assert result["text"]
    assert result["usage"]["completion_tokens"] == 6


async def test_a_page_from_another_origin_streams_over_the_websocket(
        page: Page, other_origin: str, start_sim, start_gateway, gateway_apps) -> None:
    websocket = {"allowed_origins": [other_origin]}
    gateway = await start_gateway([await start_sim(FAST_SIM)], websocket=websocket)
    assert any(isinstance(r, WebSocketRoute) and r.path == "/v1/ws"
               for r in gateway_apps[gateway].routes)
    await page.goto(other_origin + "/")
    result: dict[str, Any] = await page.evaluate("([g, b]) => wsAnswer(g, b)",
                                                 [gateway, CHAT])
    assert result["end"] == "done", result
    assert result["id"] == "a1"
    assert result["protocol"] == "sluice"
    assert result["text"]
