"""The playground: a chat page at ``/`` with its script and style sheet, shipped as
package data (``gateway/static/playground/``) and read once when the app is built."""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ASSETS = {
    "/": ("index.html", "text/html"),
    "/playground/playground.js": ("playground.js", "text/javascript"),
    "/playground/playground.css": ("playground.css", "text/css"),
}
PATHS = frozenset(ASSETS)
"""Open without an API key: the page asks for one and sends it with each request."""

# Same-origin only: no inline script, nothing from elsewhere; `connect-src 'self'`
# covers fetch and the page's own WebSocket.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def routes() -> list[Route]:
    """A GET route for each playground file."""
    folder = files("gateway") / "static" / "playground"
    return [_route(path, (folder / name).read_bytes(), media_type)
            for path, (name, media_type) in ASSETS.items()]


def _route(path: str, content: bytes, media_type: str) -> Route:
    async def serve(request: Request) -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)
    return Route(path, serve, methods=["GET"], name=f"playground:{path}",
                 include_in_schema=False)
