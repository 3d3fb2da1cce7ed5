"""The admin API: create, list and revoke managed API keys (``/admin/keys``).

Mounted only when ``admin.token`` is set; every call needs ``Authorization: Bearer
<admin token>`` (API keys do not open it). A new key is in the creation answer once and
nowhere else: stores keep its digest, and no log line carries it.
"""

from __future__ import annotations

import hmac

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core.errors import AuthenticationFailed, TooManyFailures
from gateway.core.protocol import KeyRequest, M, check_media_type, parse_body, validate
from gateway.edge.headers import header
from gateway.edge.lockout import FailedAttempts
from gateway.keys import KeyService
from gateway.observability.metrics import GatewayMetrics


def check_admin_token(request: Request) -> None:
    """Raise 401 unless the request carries the admin token; 429 without looking at it
    while the client's address is held back for earlier failures
    (:mod:`gateway.edge.lockout`)."""
    attempts: FailedAttempts = request.state.admin_attempts
    metrics: GatewayMetrics = request.state.metrics
    address = request.client.host if request.client is not None else ""
    try:
        attempts.check(address)
    except TooManyFailures:
        metrics.admin_auth_failures.labels("held_back").inc()
        raise
    sent = header(request.scope, b"authorization") or ""
    scheme, _, token = sent.partition(" ")
    expected: bytes = request.state.settings.admin.token.get_secret_value().encode()
    if not (scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), expected)):
        attempts.failed(address)
        metrics.admin_auth_failures.labels("invalid").inc()
        raise AuthenticationFailed("missing admin token" if not sent else
                                   "invalid admin token", key_sent=bool(sent))
    attempts.succeeded(address)


def _service(request: Request) -> KeyService:
    """The key service, once the caller has shown the admin token."""
    check_admin_token(request)
    keys: KeyService = request.state.keys
    return keys


async def read_json(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model`` (415 for another media type, 400 for a body
    that is not valid)."""
    check_media_type(header(request.scope, b"content-type"))
    return validate(model, parse_body(await request.body()))


def json_response(content: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code,
                    media_type="application/json")


async def create_key(request: Request) -> Response:
    keys = _service(request)
    spec = await read_json(request, KeyRequest)
    new = await keys.create(spec.name, models=tuple(spec.models), rpm=spec.rpm,
                            tpm=spec.tpm)
    return json_response({**new.record.public(), "key": new.secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    keys = _service(request)
    return json_response({"object": "list", "data": [key.public() for key in await keys.list()]})


async def revoke_key(request: Request) -> Response:
    keys = _service(request)
    revoked = await keys.revoke(request.path_params["key_id"])
    return json_response(revoked.public())


routes = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
