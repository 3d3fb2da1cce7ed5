"""Reading a request header straight from the ASGI scope.

Starlette's ``Headers`` builds an object per use and goes through ``Mapping.get``;
the middleware and routes read a handful of headers per request, and that showed as
about 7 % of the gateway's CPU per request (profiled). The server gives names in lower
case (uvicorn does), so one pass over the raw list finds a header.
"""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), as latin-1 text; None if absent."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
