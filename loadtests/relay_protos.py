"""Minimal relays of one shape on three inbound servers, to compare the servers alone.

Each prototype reads the request body, POSTs it to one engine with an aiohttp client,
frames the answer with the gateway's own :class:`~gateway.pipeline.relay.Relay` and
writes each read's complete events to the client: the work of Sluice's hot path without
routing, admission, metrics or middleware. Only the inbound server differs:

- ``uvicorn``: a pure-ASGI app under uvicorn (httptools, uvloop), as Sluice runs today;
- ``granian``: the same ASGI app under granian (``make_asgi`` is its factory);
- ``aiohttp``: the same steps as an ``aiohttp.web`` handler (not ASGI).

``sluice_asgi`` is the full gateway as a granian factory (config from ``SLUICE_CONFIG``).

    python -m loadtests.relay_protos uvicorn --port 9000 --upstream http://127.0.0.1:8100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
import uvloop
from aiohttp import web
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.edge.streaming import DONE, sse_frame
from gateway.pipeline.relay import Relay

UPSTREAM_ENV = "RELAY_UPSTREAM"
_JSON = {"Content-Type": "application/json"}
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=4096, limit_per_host=2048, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=300, sock_connect=5))


def make_asgi(upstream: str | None = None) -> ASGIApp:
    """The ASGI prototype relaying to ``upstream`` (default: ``$RELAY_UPSTREAM``)."""
    base = (upstream or os.environ[UPSTREAM_ENV]).rstrip("/")
    sessions: list[aiohttp.ClientSession] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, sessions)
            return
        if scope["path"] in ("/health", "/ready"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with sessions[0].post(base + scope["path"], data=body, headers=_JSON) as upstream:
            await send({"type": "http.response.start", "status": upstream.status,
                        "headers": _SSE_HEADERS})
            relay = Relay(chat=True, forward_usage=True)
            content = upstream.content
            while data := await content.readany():
                out = relay.feed(data)
                if out:
                    await send({"type": "http.response.body", "body": sse_frame(out),
                                "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})

    return app


async def _lifespan(receive: Receive, send: Send, sessions: list[aiohttp.ClientSession]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            sessions.append(_session())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for session in sessions:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def make_aiohttp(upstream: str) -> web.Application:
    """The same relay as an ``aiohttp.web`` application."""
    base = upstream.rstrip("/")
    key = web.AppKey("session", aiohttp.ClientSession)

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[key].post(base + request.path, data=body,
                                         headers=_JSON) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
            await response.prepare(request)
            sse = Relay(chat=True, forward_usage=True)
            content = upstream.content
            while data := await content.readany():
                out = sse.feed(data)
                if out:
                    await response.write(sse_frame(out))
        await response.write(DONE)
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=b"{}")

    async def session_context(app: web.Application) -> Any:
        app[key] = _session()
        yield
        await app[key].close()

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_post("/v1/completions", relay)
    return app


def sluice_asgi() -> ASGIApp:
    """The full gateway (settings from ``$SLUICE_CONFIG``), for servers that take a factory."""
    from gateway.app import create_app
    from gateway.config.settings import load_settings

    return create_app(load_settings(Path(os.environ["SLUICE_CONFIG"])))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one relay prototype.")
    parser.add_argument("server", choices=["uvicorn", "aiohttp"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    if args.server == "aiohttp":
        web.run_app(make_aiohttp(args.upstream), host="127.0.0.1", port=args.port,
                    backlog=2048, access_log=None, print=None, loop=uvloop.new_event_loop())
        return
    uvicorn.run(make_asgi(args.upstream), host="127.0.0.1", port=args.port, http="httptools",
                loop="uvloop", lifespan="on", log_level="warning", access_log=False,
                backlog=2048)


if __name__ == "__main__":
    main()
