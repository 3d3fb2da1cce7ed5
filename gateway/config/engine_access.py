"""What the gateway sends to an engine besides the request: its API key and extra headers.

An engine started with ``--api-key`` (vLLM guards its ``/v1/...`` paths with it) answers
401 to a request without ``Authorization: Bearer <key>``. The key is a per-engine
setting, sent on every request to that engine (generations, health checks,
``/v1/models``, ``/metrics``, WebSockets, adapter loads); a client's own ``Authorization``
(its gateway key) is never passed on.
"""

from __future__ import annotations

import re

from pydantic import SecretStr

RESERVED_HEADERS = frozenset({
    # hop-by-hop (RFC 9110 §7.6.1): they describe one connection, the gateway's own
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
    # what the gateway sets itself
    "authorization", "host", "content-length", "content-type", "x-request-id",
})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP field name (RFC 9110 §5.6.2)."""
_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
"""A field value: visible characters, spaces and tabs; no line break or NUL."""


def check_headers(engine: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` as given, or a ``ValueError`` naming the engine and the header that
    cannot be sent (a hop-by-hop or gateway-owned name, a malformed name or value)."""
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"engine {engine!r}: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            hint = " (set api_key instead)" if name.lower() == "authorization" else ""
            raise ValueError(f"engine {engine!r}: header {name!r} cannot be set here, the "
                             f"gateway sets it or it is hop-by-hop{hint}")
        if not _VALUE.match(value):
            raise ValueError(f"engine {engine!r}: header {name!r} has a line break or a "
                             "control character in its value")
    return headers


def check_api_key(engine: str, key: SecretStr | None) -> SecretStr | None:
    """``key``, or a ``ValueError`` (never quoting it) when it cannot be a Bearer token."""
    if key is not None:
        value = key.get_secret_value()
        if not value or not _VALUE.match(value) or value != value.strip():
            raise ValueError(f"engine {engine!r}: api_key is empty or has whitespace at its "
                             "ends or a control character")
    return key


def upstream_headers(key: SecretStr | None, headers: dict[str, str]) -> dict[str, str]:
    """Every header the gateway adds to a request to this engine."""
    if key is None:
        return dict(headers)
    return {**headers, "Authorization": f"Bearer {key.get_secret_value()}"}
