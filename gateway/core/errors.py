"""Sluice's one exception tree, and its translation to OpenAI error JSON.

Every error a client can see is a :class:`SluiceError`. Lower libraries' errors
(aiohttp, pydantic, orjson) are translated into this tree once, at the boundary
where they occur, with ``raise ... from exc``; a single handler turns the tree
into ``{"error": {"message", "type", "param", "code"}}`` with the right status.

    SluiceError                      (500 internal_error)
    ├── InvalidRequest               (400 invalid_request_error)
    │   ├── ContextLengthExceeded    (400, code context_length_exceeded)
    │   ├── NestingTooDeep           (400, code nesting_too_deep; param: the field)
    │   └── InvalidField             (400, param: the field; code: what is wrong)
    ├── AuthenticationFailed         (401 authentication_error, WWW-Authenticate)
    ├── PermissionDenied             (403 permission_error)
    ├── ModelNotFound                (404, code model_not_found)
    ├── KeyNotFound                  (404, code key_not_found: admin API)
    ├── AliasNotFound                (404, code alias_not_found: admin API)
    ├── UnsupportedEndpoint          (404, code unsupported_endpoint)
    ├── MethodNotAllowed             (405, Allow)
    ├── Conflict                     (409: admin API)
    │   └── NoEarlierPolicy          (409, code no_earlier_policy: a rollback without history)
    ├── RequestTimeout               (408, code request_timeout; connection closed)
    ├── RequestTooLarge              (413)
    ├── UnsupportedMediaType         (415, code unsupported_media_type)
    ├── Overloaded                   (429, Retry-After)
    │   └── RateLimited              (429, code rate_limit_exceeded: a key's RPM/TPM)
    ├── HeadersTooLarge              (431, code headers_too_large; connection closed)
    ├── TooManyConnections           (503, code too_many_connections; connection closed)
    ├── ShuttingDown                 (503, code shutting_down; Retry-After, connection closed)
    ├── UpstreamRejected             (the engine's own 4xx, passed on)
    └── EngineError                  (502 upstream_error)
        ├── EngineUnavailable        (503: connect failed, or no engine up)
        │   ├── NoHealthyEngine      (503, code no_healthy_engine)
        │   └── EngineConnectTimeout (503, code engine_connect_timeout)
        └── EngineTimeout            (504 timeout)
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

ECHO_CHARS = 120
"""The most of a client's own text (a model name, an id) an error message repeats."""


def echo(text: str) -> str:
    """``text`` as an error message may repeat it: cut to :data:`ECHO_CHARS` characters
    (a client's 100 KB model name does not come back whole)."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


class SluiceError(Exception):
    """Base of every client-visible error."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return self.status

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(SluiceError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class NestingTooDeep(InvalidRequest):
    """A JSON field nests deeper than the gateway relays; ``param`` names the field."""

    default_code = "nesting_too_deep"


class InvalidField(InvalidRequest):
    """A field the gateway acts on is missing, of the wrong type or out of range; 400 as
    OpenAI and vLLM answer it (the SDKs raise ``BadRequestError``)."""

    default_code = "invalid_value"


class AuthenticationFailed(SluiceError):
    """No valid API key. The challenge header follows RFC 6750: a bare ``Bearer`` when
    no key was sent, ``error="invalid_token"`` when a wrong one was."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, *, key_sent: bool = False) -> None:
        challenge = 'Bearer error="invalid_token"' if key_sent else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class PermissionDenied(SluiceError):
    status = 403
    type = "permission_error"


class ModelNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class KeyNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    default_code = "key_not_found"


class AliasNotFound(SluiceError):
    status = 404
    type = "invalid_request_error"
    default_code = "alias_not_found"


class Conflict(SluiceError):
    """The change asked for conflicts with the state it would change (a rollout while
    another runs)."""

    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class NoEarlierPolicy(Conflict):
    """A rollback of an alias whose policy history is empty."""

    default_code = "no_earlier_policy"


class UnsupportedEndpoint(SluiceError):
    """The model's engines do not serve this endpoint (they answer 404 for its path):
    an embeddings request to a generation model, say. Not the engine's fault."""

    status = 404
    type = "invalid_request_error"
    default_code = "unsupported_endpoint"


class MethodNotAllowed(SluiceError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message, headers={"Allow": allow})


class RequestTimeout(SluiceError):
    """A request's head or body did not arrive in time (written by the server's protocol,
    which then closes the connection)."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class RequestTooLarge(SluiceError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(SluiceError):
    """The body is not declared as JSON (``application/json`` or a ``+json`` type)."""

    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class Overloaded(SluiceError):
    status = 429
    type = "rate_limit_error"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RateLimited(Overloaded):
    """An API key's requests (``limit="rpm"``) or tokens (``"tpm"``) per minute are
    spent; ``Retry-After`` says when the sliding window frees enough."""

    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit = limit


class TooManyFailures(Overloaded):
    """A client address sent too many wrong admin tokens in a row; ``Retry-After``
    says when it may try again (see :mod:`gateway.edge.lockout`)."""

    default_code = "too_many_failed_attempts"


class HeadersTooLarge(SluiceError):
    """The request line and headers are larger, or more numerous, than the server reads
    (written by the server's protocol, which then closes the connection)."""

    status = 431
    type = "invalid_request_error"
    default_code = "headers_too_large"


class TooManyConnections(SluiceError):
    """No connection slot for this request: every slot holds a request or a socket, or
    the client's address holds its share, and a reserved slot answers only a probe
    (written by the server's protocol, which then closes the connection)."""

    status = 503
    type = "service_unavailable"
    default_code = "too_many_connections"


class UpstreamRejected(SluiceError):
    """The engine refused the request with a 4xx; its status, message, ``type``, ``param``
    and ``code`` pass on as the engine sent them (vLLM's codes are numbers)."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, param: str | None = None,
                 code: str | int | None = None, error_type: str | None = None) -> None:
        super().__init__(message, param=param)
        self._status = status
        self.engine_code = code
        self.error_type = error_type or self.type

    @property
    def status_code(self) -> int:
        return self._status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.engine_code}}


class EngineError(SluiceError):
    status = 502
    type = "upstream_error"
    default_code = "engine_error"


class EngineUnavailable(EngineError):
    status = 503
    default_code = "engine_unavailable"


class NoHealthyEngine(EngineUnavailable):
    default_code = "no_healthy_engine"


class EngineConnectTimeout(EngineUnavailable):
    """An engine did not accept a connection within ``timeouts.connect_s``. Nothing was
    sent, so another engine may take the request; the engine is slow to accept (its
    listen queue full, its host gone), which its breaker counts, not known to be down."""

    default_code = "engine_connect_timeout"


class AdapterLoadFailed(EngineError):
    """An engine could not load the request's LoRA adapter (tried on another one; the
    engine itself is not blamed: it serves everything else)."""

    default_code = "adapter_load_failed"


class AdapterUnavailable(SluiceError):
    """No slot for the request's LoRA adapter came within ``lora.load_timeout_s``: the
    engine chosen holds its bound of adapters, all in use (no engine is at fault)."""

    status = 503
    type = "service_unavailable"
    default_code = "adapter_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class EngineTimeout(EngineError):
    """An engine did not answer in time. ``blames_engine`` is False for the total-time
    bound: a long request reaching it says nothing about the engine's health."""

    status = 504
    type = "timeout_error"
    default_code = "engine_timeout"

    def __init__(self, message: str, *, blames_engine: bool = True) -> None:
        super().__init__(message)
        self.blames_engine = blames_engine


class ShuttingDown(SluiceError):
    """The gateway is draining before it stops; another replica should take the request."""

    status = 503
    type = "service_unavailable"
    default_code = "shutting_down"

    def __init__(self, message: str = "the gateway is shutting down; retry on another "
                                      "replica") -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})
