"""The server's HTTP protocol: uvicorn's httptools protocol, with HTTP/1.0-correct framing
of streamed responses and bounds on what a client can make a connection hold before its
request is complete. This is the one module that relies on uvicorn's internals
(:data:`UVICORN_INTERNALS`, checked when it is imported, so an incompatible uvicorn fails
at start and not silently: uvicorn is pinned in ``pyproject.toml``).

**HTTP/1.0.** uvicorn frames every response that has no Content-Length as
``Transfer-Encoding: chunked``, even for an HTTP/1.0 request, whose client cannot read it
(RFC 9112 §6.1: a server must not send a transfer coding to an HTTP/1.0 client). For
HTTP/1.0 uvicorn already closes the connection after the response, so a streamed body is
written as it comes and ended by the close instead (RFC 9112 §6.3, close-delimited):
``chunked_encoding`` set before the response starts keeps uvicorn from adding chunking,
and ``expected_content_length`` is the count of body bytes it still lets through.

**Bounds.** uvicorn's httptools protocol reads a request head of any size, waits for a head or a
body forever, and takes every connection it is offered: its ``timeout_keep_alive`` only
runs after a response (never on a connection that has sent nothing or half a request),
and ``limit_concurrency`` answers 503 to every request, ``/health`` included, once idle
sockets fill it, without closing any of them. This protocol adds, per
:class:`~gateway.config.settings.ConnectionLimits`:

- **head size and count**: the request line and headers are counted as they are fed to
  the parser. httptools keeps an unfinished header to itself, so the bytes of a head not
  yet complete are counted as they arrive, not only its finished lines; past
  ``max_header_bytes`` or ``max_headers``, a 431 and the connection is closed, so a huge
  head is never held whole.
- **head read timeout**: a request head must arrive whole within ``header_timeout_s`` of
  the connection's opening, or of a later request's first byte; else a 408.
- **body read timeout and deadline**: no body byte for ``body_timeout_s`` while the server
  reads the body (not while the app holds reading back), or a body not whole within
  ``body_deadline_s`` of the head's end however steadily it trickles, is a 408, or a bare
  close once a response has started. A deadline that passes while the app holds reading
  back is checked again ``body_timeout_s`` later. Responses are never timed here: a
  stream may take as long as it takes.
- **connection slots** (:mod:`gateway.edge.slots`): at ``max_connections`` (WebSockets
  included), a new connection closes the oldest one that is waiting for a request head
  (idle keep-alive ones included), so idle sockets cannot take every descriptor; a client
  address past ``max_connections_per_address`` HTTP connections, or a new connection
  when every connection holds a request or a socket, gets one of
  ``reserved_connections`` slots, where only one ``GET``/``HEAD`` of ``/health`` or
  ``/ready`` is answered (then the connection is closed) and anything else is a 503, so
  the probes keep answering; past the reserve, a 503 at once.

Each refusal is written straight to the socket as OpenAI-shaped JSON with
``Connection: close``, then the connection is closed. The server builds one protocol
class per server (per worker process) with :func:`protocol_for`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import ClassVar

import httptools
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from uvicorn._types import Scope as UvicornScope
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.config.connections import ConnectionLimits
from gateway.core.errors import HeadersTooLarge, RequestTimeout, SluiceError, TooManyConnections
from gateway.edge.slots import Slots, is_probe

UVICORN_INTERNALS = {
    httptools_impl.HttpToolsProtocol: (
        "connection_made", "connection_lost", "data_received", "handle_websocket_upgrade",
        "on_message_begin", "on_url", "on_header", "on_headers_complete", "on_body",
        "on_message_complete", "on_response_complete", "send_400_response",
        "_start_asgi_task", "_should_upgrade", "_unsupported_upgrade_warning",
        "_unset_keepalive_if_required"),
    httptools_impl.RequestResponseCycle: ("run_asgi", "send", "receive"),
}
"""What this module overrides or calls of uvicorn's classes. The instance attributes it
reads (a protocol's ``parser``, ``cycle``, ``flow``, ``connections``, ``server_state``,
``client``, ``url``;
a cycle's ``response_started``, ``response_complete``, ``chunked_encoding``,
``expected_content_length``, ``keep_alive``, ``disconnected``, ``message_event``,
``waiting_for_100_continue``) are checked by ``tests/unit/test_uvicorn_internals.py``
on a live connection."""


def _check_uvicorn() -> None:
    missing = [f"{cls.__name__}.{name}" for cls, names in UVICORN_INTERNALS.items()
               for name in names if not hasattr(cls, name)]
    if missing:
        import uvicorn
        raise ImportError(f"uvicorn {uvicorn.__version__} lacks what gateway.edge.protocol "
                          f"builds on: {', '.join(missing)}; install the pinned uvicorn")


_check_uvicorn()


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


class _Phase(enum.Enum):
    HEAD = "head"
    """Waiting for or reading a request head."""
    BODY = "body"
    """The head is in; its body is still coming."""
    DONE = "done"
    """The request is read whole; only the response may still be running."""


class _Refused(Exception):
    """Raised in a parser callback to stop the parser at once and answer ``error``."""

    def __init__(self, error: SluiceError) -> None:
        super().__init__(error.message)
        self.error = error


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with size, time and count bounds on requests."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    slots: ClassVar[Slots[EdgeProtocol]] = Slots(limits)
    """This server's slots (see :mod:`gateway.edge.slots`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase = _Phase.HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._requests = 0
        self._head_begun = False
        self._head_bytes = 0
        """The request line and the finished header lines so far, counted exactly."""
        self._head_fed = 0
        """Every byte fed while the head was open: an unfinished header included."""
        self._header_count = 0
        self._feed_body = 0
        self._body_seen = 0.0
        self._body_due = 0.0
        super().connection_made(transport)
        admission = self.slots.open(self, self.client[0] if self.client else None,
                                    len(self.connections))
        self._probes_only = admission.probes_only
        """Why this connection holds a reserved slot: it may only ask a probe."""
        if admission.refusal is not None:
            self._refuse(TooManyConnections(admission.refusal))
            return
        if admission.evict is not None:
            admission.evict._evict()
        self.slots.waiting[self] = None
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.slots.close(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._phase is _Phase.HEAD and self._timer is None:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
        self._feed_body = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.error)
                return
            self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase is _Phase.HEAD and self._head_begun:
            self._head_fed += len(data)
            if self._head_fed > self.limits.max_header_bytes:
                self._refuse(self._head_too_large())
        elif self._phase is _Phase.BODY:
            self._body_seen = self.loop.time()
            if self._timer is None:
                self._arm(min(self.limits.body_timeout_s, self._body_due - self._body_seen),
                          self._body_timed_out)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self.slots.close(self)
        super().handle_websocket_upgrade()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _Phase.HEAD
        self._head_begun = True
        self._head_bytes = self._header_count = 0
        # This feed's bytes before the head began (a previous body's end) are not head.
        self._head_fed = -self._feed_body

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_header_bytes:
            raise _Refused(self._head_too_large())
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._head_bytes > self.limits.max_header_bytes or \
                self._header_count > self.limits.max_headers:
            raise _Refused(self._head_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._probes_only is not None and not is_probe(self.parser.get_method(), self.url):
            raise _Refused(TooManyConnections(self._probes_only))
        self.slots.waiting.pop(self, None)
        self._head_begun = False
        self._phase = _Phase.BODY
        self._body_due = self.loop.time() + self.limits.body_deadline_s
        self._requests += 1
        super().on_headers_complete()
        if self._probes_only is not None and self.cycle is not None:
            self.cycle.keep_alive = False  # one probe, then the reserved slot is free

    def on_body(self, body: bytes) -> None:
        self._feed_body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._phase = _Phase.DONE
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before its body was read whole: uvicorn's keep-alive timer, armed
            # at the response, was stopped by the body's bytes; the head timeout takes over.
            self._await_next_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase is _Phase.DONE and self.cycle.response_complete \
                and not self.transport.is_closing():
            self._phase = _Phase.HEAD
            self.slots.waiting[self] = None  # uvicorn's keep-alive timeout runs until a byte

    # Timers and refusals

    def _await_next_request(self) -> None:
        if not self.transport.is_closing():
            self._phase = _Phase.HEAD
            self.slots.waiting[self] = None
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A head pipelined behind a response still running: its wait starts later.
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
            return
        self._refuse(RequestTimeout(
            f"the request head did not arrive within {self.limits.header_timeout_s:g} s"))

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase is not _Phase.BODY:
            return
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # The server is not reading (the app holds back, or has not asked for the
            # body yet): not the client's delay.
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        now = self.loop.time()
        left = min(self._body_seen + self.limits.body_timeout_s, self._body_due) - now
        if left > 0:
            self._arm(left, self._body_timed_out)
        elif now >= self._body_due:
            self._refuse(RequestTimeout(f"the request body did not arrive whole within "
                                        f"{self.limits.body_deadline_s:g} s"))
        else:
            self._refuse(RequestTimeout(
                f"no request body byte came for {self.limits.body_timeout_s:g} s"))

    def _evict(self) -> None:
        """Closes this waiting connection to make room for a new one."""
        if self._head_begun or not self._requests:
            self._refuse(RequestTimeout("the request head did not arrive before the "
                                        "server needed the connection"))
        else:  # idle between requests: closed as a keep-alive timeout closes it
            self._disarm()
            self.transport.close()

    def _head_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"request headers exceed {self.limits.max_header_bytes} "
                               f"bytes or {self.limits.max_headers} lines")

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self._disarm()
        self.send_400_response(msg)

    def _refuse(self, error: SluiceError) -> None:
        """Writes ``error`` unless a response has started, then closes the connection."""
        self._disarm()
        self.slots.waiting.pop(self, None)
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_error_bytes(error, self.server_state.default_headers))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def _error_bytes(error: SluiceError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = error.to_json()
    content = [STATUS_LINE[error.status_code]]
    for name, value in default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend([b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n", body])
    return b"".join(content)


def protocol_for(limits: ConnectionLimits) -> type[EdgeProtocol]:
    """A protocol class for one server: ``limits``, and its own slots (so two servers in
    one process never evict each other's connections)."""
    configured = limits

    class ServerProtocol(EdgeProtocol):
        limits = configured
        slots: ClassVar[Slots[EdgeProtocol]] = Slots(configured)

    return ServerProtocol
