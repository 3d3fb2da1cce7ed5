"""``gateway/edge/protocol.py`` builds on uvicorn's internals: this drives the gateway's
protocol through live requests on an in-memory transport and reads every attribute the
module reads, so a uvicorn that renamed one fails here by name (and the module's own
check fails at import for the methods it overrides)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from gateway.config.connections import ConnectionLimits
from gateway.edge.protocol import UVICORN_INTERNALS, protocol_for

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_ATTRIBUTES = ("parser", "cycle", "flow", "connections", "server_state", "transport",
                       "loop", "logger", "client", "url")
CYCLE_ATTRIBUTES = ("scope", "response_started", "response_complete", "chunked_encoding",
                    "expected_content_length", "keep_alive", "disconnected", "message_event",
                    "waiting_for_100_continue")


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(
            name, default)

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def streamed(scope: Any, receive: Any, send: Any) -> None:
    """A streamed answer without Content-Length (as every SSE stream is)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve(request: bytes) -> tuple[Any, Transport]:
    config = uvicorn.Config(streamed, lifespan="off", log_config=None)
    config.load()
    protocol = protocol_for(ConnectionLimits())(config, ServerState(), {})
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):
        await asyncio.sleep(0)
    return protocol, transport


def test_uvicorn_is_the_pinned_version() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"uvicorn[standard]=={uvicorn.__version__}" in pins


def test_every_method_the_protocol_builds_on_exists() -> None:
    for cls, names in UVICORN_INTERNALS.items():
        for name in names:
            assert hasattr(cls, name), f"uvicorn {uvicorn.__version__}: {cls.__name__}.{name}"


async def test_the_attributes_the_protocol_reads_exist_on_a_live_connection() -> None:
    protocol, transport = await serve(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for name in PROTOCOL_ATTRIBUTES:
        assert hasattr(protocol, name), f"uvicorn {uvicorn.__version__}: protocol.{name}"
    for name in CYCLE_ATTRIBUTES:
        assert hasattr(protocol.cycle, name), f"uvicorn {uvicorn.__version__}: cycle.{name}"
    assert hasattr(protocol.flow, "read_paused")
    assert hasattr(protocol.server_state, "default_headers")
    assert b"transfer-encoding: chunked" in bytes(transport.written).lower()


async def test_an_http10_stream_is_written_close_delimited() -> None:
    _, transport = await serve(b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"data: 1\n\n"
    assert transport.closed
