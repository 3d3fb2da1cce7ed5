"""A managed key presented while the key store is down is a 503, never a 500."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.middleware import AuthMiddleware
from gateway.stores.protocols import StoreUnavailable


class DownKeys:
    async def identify(self, token: str) -> None:
        raise StoreUnavailable("the shared store is unavailable")


async def test_a_key_lookup_failing_in_the_store_is_a_503() -> None:
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = AuthMiddleware(app, api_keys=[], managed_keys=True)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", b"Bearer sk-sluice-abc")],
             "state": {"keys": DownKeys()}}
    await middleware(scope, receive, send)
    assert reached == []
    assert sent[0]["status"] == 503
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"]["message"] == "the shared store is unavailable"
