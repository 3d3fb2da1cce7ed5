"""The playground page in headless Chromium, against simulator engines: the model list,
an answer streamed over SSE and over the WebSocket, the stop button, the API key."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Page, expect
from starlette.routing import WebSocketRoute

from simulator import SimConfig
from tests.integration.helpers import sim_queued, wait_until

pytestmark = pytest.mark.browser

KEY = "sk-browser-test-key-0123456789"
DIGITS = re.compile(r"^\d+$")
SLOW = SimConfig(prefill_base_ms=2, decode_step_ms=40)


def has_websocket(app: object) -> bool:
    return any(isinstance(r, WebSocketRoute) and r.path == "/v1/ws"
               for r in getattr(app, "routes", []))


async def engine_idle(sim: str) -> None:
    """Wait until the simulator runs and queues nothing (the stopped request is gone)."""
    async with httpx.AsyncClient(timeout=10) as http:
        async def idle() -> bool:
            return await sim_queued(http, sim) == 0
        await wait_until(idle, "the engine to drop the stopped request")


async def ask(page: Page, prompt: str) -> None:
    await page.fill("#prompt", prompt)
    await page.press("#prompt", "Enter")


async def answered(page: Page) -> str:
    """The last answer's text, once its stream has ended."""
    await expect(page.locator("body")).to_have_attribute("data-running", "false",
                                                         timeout=20_000)
    return await page.locator("#messages li.assistant .content").last.inner_text()


async def test_models_then_an_answer_over_sse(page: Page, start_sim, start_gateway) -> None:
    gateway = await start_gateway([await start_sim()])
    await page.goto(gateway + "/")
    await expect(page.locator("#model option")).to_have_text(["sim-model"])
    await page.fill("#max-tokens", "12")
    await ask(page, "Hello there")
    text = await answered(page)
    assert text.strip()
    assert await page.locator("#messages li.user .content").inner_text() == "Hello there"
    assert float(await page.get_attribute("#ttft", "data-value") or "nan") > 0
    assert await page.get_attribute("#tokens", "data-value") == "12"
    assert await page.get_attribute("#tps", "data-value")
    await expect(page.locator("#status")).to_have_text("done")
    # The engine and the Server-Timing breakdown, where the gateway sends them.
    async with httpx.AsyncClient(timeout=10) as http:
        sent = (await http.post(gateway + "/v1/chat/completions", json={
            "model": "sim-model", "max_tokens": 1, "stream": True,
            "messages": [{"role": "user", "content": "x"}]})).headers
    if "x-sluice-engine" in sent:
        await expect(page.locator("#engine")).to_have_text(sent["x-sluice-engine"])
    if "server-timing" in sent:
        await expect(page.locator("#server-timing")).to_have_attribute("data-value",
                                                                       re.compile(r"\w"))


async def test_stop_aborts_the_stream_and_frees_the_engine(page: Page, start_sim,
                                                            start_gateway) -> None:
    sim = await start_sim(SLOW)
    gateway = await start_gateway([sim])
    await page.goto(gateway + "/")
    await expect(page.locator("#model option")).to_have_count(1)
    await page.fill("#max-tokens", "2000")
    await ask(page, "Tell me a long story")
    await expect(page.locator("#tokens")).to_have_attribute("data-value", DIGITS,
                                                            timeout=20_000)
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("stopped")
    await engine_idle(sim)
    tokens = int(await page.get_attribute("#tokens", "data-value") or "0")
    assert 0 < tokens < 2000


async def test_the_api_key_field_unlocks_the_model_list(page: Page, start_sim,
                                                        start_gateway) -> None:
    gateway = await start_gateway([await start_sim()], api_keys=[KEY])
    await page.goto(gateway + "/")
    await expect(page.locator("#status")).to_contain_text("HTTP 401")
    await page.fill("#api-key", KEY)
    await page.press("#api-key", "Tab")  # `change` fires when the field loses focus
    await expect(page.locator("#model option")).to_have_text(["sim-model"])
    await ask(page, "Hi")
    assert (await answered(page)).strip()
    assert await page.evaluate("sessionStorage.getItem('sluice.apiKey')") == KEY
    await page.reload()
    assert await page.input_value("#api-key") == KEY


async def test_an_answer_over_the_websocket_and_stop(page: Page, start_sim, start_gateway,
                                                     gateway_apps) -> None:
    sim = await start_sim(SLOW)
    gateway = await start_gateway([sim], api_keys=[KEY])
    assert has_websocket(gateway_apps[gateway])
    await page.goto(gateway + "/")
    await page.fill("#api-key", KEY)
    await page.press("#api-key", "Tab")
    await expect(page.locator("#model option")).to_have_count(1)
    await page.select_option("#transport", "ws")
    await page.fill("#max-tokens", "5")
    await ask(page, "Hi")
    assert (await answered(page)).strip()
    await expect(page.locator("#used-transport")).to_have_text("WebSocket")
    assert await page.get_attribute("#tokens", "data-value") == "5"
    await page.fill("#max-tokens", "2000")
    await ask(page, "Tell me a long story")
    await expect(page.locator("#tokens")).to_have_attribute("data-value", DIGITS,
                                                            timeout=20_000)
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("stopped")
    await engine_idle(sim)
