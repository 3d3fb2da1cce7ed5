"""Browser fixtures: headless Chromium driven by Playwright.

Playwright's own browser download is not used: the tests drive the system Chromium
(Debian's ``chromium`` package, which ``make test`` installs), or the one named by
``SLUICE_CHROMIUM``. Without Playwright or Chromium the tests are skipped locally and
fail in CI.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import start_sim  # noqa: F401 - simulators, as there

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path(os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium"))
RESULTS = Path(__file__).resolve().parents[2] / "results" / "browser"
"""Where the tests leave their screenshots."""


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The Chromium executable."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: run `make chromium`")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """One headless Chromium for the session."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed: run `make gateway` (the dev extra)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium))
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page in its own context; any script error on it fails the test."""
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert not errors, f"script errors on the page: {errors}"
