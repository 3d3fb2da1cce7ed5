"""Translation of the exception tree into HTTP responses: the one place it happens."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.core.errors import InvalidRequest, MethodNotAllowed, SluiceError

log = logging.getLogger("sluice.errors")


def error_response(exc: SluiceError) -> Response:
    """The OpenAI error JSON for ``exc``, with its status and headers."""
    return Response(exc.to_json(), status_code=exc.status_code,
                    media_type="application/json", headers=exc.headers)


async def sluice_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SluiceError)
    if exc.status_code >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path,
                    exc.status_code, exc.message)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    error: SluiceError
    if exc.status_code == 404:
        error = InvalidRequest(f"no route {request.method} {request.url.path}", code="not_found")
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}; use {allow}", allow=allow)
    else:
        error = InvalidRequest(str(exc.detail), code=f"http_{exc.status_code}")
    response = error_response(error)
    response.status_code = exc.status_code
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(SluiceError("internal gateway error"))


EXCEPTION_HANDLERS = {
    SluiceError: sluice_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
