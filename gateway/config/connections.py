"""Bounds of client connections: what a connection may hold before its request is whole,
how many connections a worker keeps, and the WebSocket routes' limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConnectionLimits(BaseModel):
    """Bounds on client connections and on how long a request may take to arrive.

    The read timeouts bound the *request* only: a response, streamed or not, may take as
    long as the upstream timeouts allow. An idle connection between requests is closed
    after ``keep_alive_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_connections: int = Field(
        default=4096, ge=2,
        description="open client connections per worker, WebSockets included; past it a new "
                    "connection closes the oldest one still waiting for a request head, or "
                    "takes a reserved slot, or is refused (503)")
    reserved_connections: int = Field(
        default=8, ge=0,
        description="slots beyond max_connections (and beyond an address's cap) for "
                    "GET or HEAD of /health and /ready only: one request, then closed; any "
                    "other request on one is refused (503)")
    max_connections_per_address: int = Field(
        default=256, ge=1,
        description="HTTP connections one client address may hold per worker (not its "
                    "WebSockets: websocket.max_sockets_per_key); past it a new one only takes "
                    "a reserved slot. Behind a proxy every connection has the proxy's "
                    "address: raise it to max_connections")
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024,
        description="request line and headers together; larger is a 431")
    max_headers: int = Field(default=100, ge=8, description="header lines; more is a 431")
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="the whole request head must arrive within this, counted from the "
                    "connection's opening or the request's first byte; else 408")
    body_timeout_s: float = Field(
        default=30.0, gt=0,
        description="longest wait for the next byte of a request body; else 408")
    body_deadline_s: float = Field(
        default=300.0, gt=0,
        description="the whole request body must arrive within this of the head's end, "
                    "however steadily it trickles; else 408")
    keep_alive_s: int = Field(
        default=75, ge=1,
        description="an idle connection between requests is closed after this; longer "
                    "than clients keep idle connections (aiohttp 15 s, load balancers "
                    "60 s), or a client's next request meets a connection being closed "
                    "and fails (no client retries a POST)")


class WebSocketSettings(BaseModel):
    """Bounds of the WebSocket routes (``/v1/ws`` and the ``/v1/realtime`` relay).

    ``max_message_bytes`` and the ping settings go to the server (uvicorn): a client
    message larger than the limit closes its socket with 1009, and a peer that does not
    answer a ping within ``ping_timeout_s`` is closed with 1011."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_message_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="largest WebSocket message from a client or an engine")
    max_requests_per_socket: int = Field(
        default=16, ge=1, description="requests in flight on one /v1/ws socket")
    ping_interval_s: float = Field(
        default=20.0, gt=0,
        description="each client socket is pinged this often; an engine socket "
                    "(/v1/realtime) is pinged after this long without a message, and closed "
                    "when its pong takes longer than half of it")
    ping_timeout_s: float = Field(
        default=20.0, gt=0,
        description="a client that has not answered a ping within this is closed (1011)")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="without API keys, browser origins that may open a WebSocket "
                    "besides the gateway's own address (its IP and port, or localhost on "
                    "loopback; a name it is reached by must be listed); '*' allows any")
    max_sockets_per_key: int = Field(
        default=64, ge=1,
        description="/v1/ws sockets one API key (one client address without keys) may hold "
                    "open per worker; past it the handshake is a 429")
    max_realtime_sessions: int = Field(
        default=256, ge=1, description="/v1/realtime sessions relayed at once (per worker)")
    max_realtime_sessions_per_key: int = Field(
        default=64, ge=1,
        description="of those, at most this many held by one API key (by one client "
                    "address without keys), per worker")
    realtime_first_message_s: float = Field(
        default=10.0, gt=0,
        description="without ?model=, the wait for the session.update naming the model")
