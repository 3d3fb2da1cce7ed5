"""``/openapi.json`` describes every route the app serves; ``/docs`` renders it with
nothing loaded from elsewhere."""

from __future__ import annotations

import re

import httpx
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from gateway.edge.openapi import openapi_path
from tests.conftest import StartGateway


async def test_every_route_is_in_the_openapi_document(
        sim_server: str, start_gateway: StartGateway,
        gateway_apps: dict[str, Starlette]) -> None:
    gateway = await start_gateway([sim_server], admin={"token": "a" * 32})  # admin routes too
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
    routes = [r for r in gateway_apps[gateway].routes if isinstance(r, Route | WebSocketRoute)]
    assert len(routes) > 20
    for route in routes:
        methods = ["get"] if isinstance(route, WebSocketRoute) else [
            m.lower() for m in route.methods or () if m != "HEAD"]
        for method in methods:
            operation = spec["paths"][openapi_path(route.path)][method]
            assert operation["summary"] != "Undocumented route", (method, route.path)
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    assert {"ChatCompletionRequest", "CompletionRequest", "ChatMessage", "ChatCompletion",
            "Completion", "ModelList", "Model", "Error"} <= set(schemas)
    assert schemas["ChatCompletionRequest"]["properties"]["messages"]["items"] == {
        "$ref": "#/components/schemas/ChatMessage"}
    refs = re.findall(r'"\$ref": ?"#/components/(\w+)/(\w+)"', str(spec).replace("'", '"'))
    assert refs
    assert all(name in spec["components"][kind] for kind, name in refs)


async def test_docs_render_the_document_with_no_external_assets(
        sim_server: str, start_gateway: StartGateway) -> None:
    gateway = await start_gateway([sim_server])
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        page = await http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'fetch("openapi.json")' in html
    assert "http:" not in html
    assert "https:" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html)
    assert "<link" not in html
    assert "<script src" not in html
