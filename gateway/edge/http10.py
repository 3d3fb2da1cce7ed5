"""uvicorn's httptools protocol, with HTTP/1.0-correct framing of streamed responses.

uvicorn frames every response that has no Content-Length as ``Transfer-Encoding:
chunked``, even for an HTTP/1.0 request, whose client cannot read it (RFC 9112 §6.1: a
server must not send a transfer coding to an HTTP/1.0 client). For HTTP/1.0 uvicorn
already closes the connection after the response, so a streamed body can be written as
it comes and ended by the close instead (RFC 9112 §6.3, close-delimited). This protocol
does that; everything else is uvicorn's own. The server selects it with
``uvicorn.Config(http=HttpToolsProtocol)``.

It relies on two details of uvicorn's ``RequestResponseCycle`` (uvicorn is pinned):
``chunked_encoding`` set before the response starts keeps it from adding chunking, and
``expected_content_length`` is the count of body bytes it still lets through.
"""

from __future__ import annotations

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from uvicorn._types import Scope as UvicornScope
from uvicorn.protocols.http import httptools_impl


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """Sends streamed responses to HTTP/1.0 clients close-delimited, not chunked."""

    def _start_asgi_task(self, cycle: httptools_impl.RequestResponseCycle,
                         app: ASGI3Application) -> None:
        if cycle.scope.get("http_version") == "1.0":
            app = _close_delimited(app, cycle)
        super()._start_asgi_task(cycle, app)


def _close_delimited(app: ASGI3Application,
                     cycle: httptools_impl.RequestResponseCycle) -> ASGI3Application:
    """``app``, with a response lacking Content-Length written unframed, up to the close."""

    async def framed_app(scope: UvicornScope, receive: ASGIReceiveCallable,
                         send: ASGISendCallable) -> None:
        unframed = False

        async def send_unframed(message: ASGISendEvent) -> None:
            nonlocal unframed
            if message["type"] == "http.response.start" and not cycle.response_started:
                names = {bytes(name).lower() for name, _ in message.get("headers", ())}
                if not names & {b"content-length", b"transfer-encoding"}:
                    unframed = True
                    cycle.chunked_encoding = False
                    cycle.keep_alive = False
            elif message["type"] == "http.response.body" and unframed:
                cycle.expected_content_length = len(message.get("body", b""))
            await send(message)

        await app(scope, receive, send_unframed)

    return framed_app
