"""The playground against the real stack (``sluice serve`` and a vLLM CPU engine): an
answer streams into the page with its TTFT; a screenshot is left in ``results/browser/``."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from loadtests.stack import RealStack
from tests.browser.conftest import RESULTS

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def test_the_playground_streams_from_the_real_engine(page: Page,
                                                           stack: RealStack) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        models = (await http.get(stack.gateway + "/v1/models")).json()["data"]
    await page.goto(stack.gateway + "/")
    await expect(page.locator("#model option")).to_have_count(len(models))
    await page.select_option("#model", stack.model)
    await page.fill("#temperature", "0")
    await page.fill("#max-tokens", "48")
    await page.fill("#prompt", "What is the capital of France?")
    await page.click("#send")
    await expect(page.locator("body")).to_have_attribute("data-running", "false",
                                                         timeout=120_000)
    await expect(page.locator("#status")).to_have_text("done")
    answer = await page.locator("#messages li.assistant .content").last.inner_text()
    assert "Paris" in answer
    ttft_ms = float(await page.get_attribute("#ttft", "data-value") or "nan")
    assert ttft_ms > 0
    assert await page.inner_text("#ttft") == f"{ttft_ms:.0f} ms"
    assert int(await page.get_attribute("#tokens", "data-value") or "0") > 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    shot = RESULTS / "playground.png"
    await page.screenshot(path=shot, full_page=True)
    print(f"playground screenshot: {shot}")
