"""Counting generation requests that end before the director takes them.

The director counts every request it runs in ``sluice_requests_total``. Requests refused
earlier (401 without a key, 413, 415, a body that is not JSON, a client gone while
sending) are counted here, with model ``unknown``, version and engine ``none`` so that nothing a
client sends can add label values.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.metrics import GatewayMetrics

_DIRECTOR_COUNTS = "director_counts"


def director_counts(request: Request) -> None:
    """Mark ``request`` as the director's to count (call just before handing it over)."""
    request.state.director_counts = True


class RefusalAccountingMiddleware:
    """Counts the POSTs to generation routes that the director never saw.

    ``endpoints`` maps a route's path to its ``endpoint`` label."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics,
                 endpoints: dict[str, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) \
            if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if not scope.get("state", {}).get(_DIRECTOR_COUNTS):
                self.metrics.requests.labels("unknown", "none", "none", endpoint,
                                             str(status or 500)).inc()
