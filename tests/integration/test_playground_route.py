"""The playground page and its files: served at ``/`` from package data, open without
a key when keys are set, same-origin only (CSP), and gone when ``playground`` is off."""

from __future__ import annotations

import httpx
import pytest

KEY = "sk-playground-test-key-0123456789"


async def test_the_page_and_its_files_are_served(start_gateway) -> None:
    gateway = await start_gateway([])
    async with httpx.AsyncClient(base_url=gateway) as http:
        page = await http.get("/")
        script = await http.get("/playground/playground.js")
        style = await http.get("/playground/playground.css")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/playground/playground.js" defer></script>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/v1/chat/completions" in script.text
    assert style.headers["content-type"].startswith("text/css")


async def test_the_page_needs_no_key_but_the_api_still_does(start_gateway) -> None:
    gateway = await start_gateway([], api_keys=[KEY])
    async with httpx.AsyncClient(base_url=gateway) as http:
        page = await http.get("/")
        script = await http.get("/playground/playground.js")
        models = await http.get("/v1/models")
        other = await http.get("/playground/other.js")
    assert page.status_code == 200
    assert script.status_code == 200
    assert models.status_code == 401
    assert other.status_code == 401


@pytest.mark.parametrize("path", ["/", "/playground/playground.js"])
async def test_the_playground_can_be_turned_off(start_gateway, path: str) -> None:
    gateway = await start_gateway([], playground=False)
    async with httpx.AsyncClient(base_url=gateway) as http:
        response = await http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
