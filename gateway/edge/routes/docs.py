"""The API's description: ``/openapi.json``, and ``/docs``, a page that renders it.

The page ships in the package (``gateway/static/docs.html``) and loads nothing from
elsewhere: it fetches ``/openapi.json`` and lists the routes with their schemas.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.edge.openapi import document

_PAGE = files("gateway").joinpath("static/docs.html")


async def openapi(request: Request) -> Response:
    return Response(orjson.dumps(document(request.app.routes)),
                    media_type="application/json")


async def docs(request: Request) -> Response:
    return HTMLResponse(await asyncio.to_thread(_PAGE.read_bytes))


routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
