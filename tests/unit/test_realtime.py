"""The ``/v1/realtime`` relay's own bookkeeping, with a scripted client socket and
engines' sockets played through the memory transport: whatever ends a session, the
engine's socket is closed and the engine's breaker and lease are given back."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.connections import WebSocketSettings
from gateway.config.fleet import AdmissionSettings, ResilienceSettings
from gateway.config.settings import EngineConfig, TimeoutSettings
from gateway.edge.websocket.realtime import RealtimeRelay
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.admission import Admission
from gateway.pipeline.connector import Connector
from gateway.pipeline.director import Director
from gateway.pipeline.drain import Drain
from gateway.stores.memory import MemoryCounters
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.client import EngineClient
from gateway.upstream.memory import (
    MemoryRequest,
    MemoryResponse,
    MemorySocket,
    MemoryTransport,
)
from gateway.upstream.pool import EnginePool
from tests.unit.pipeline.conftest import InOrder


class Dialer:
    """The engine side of the memory transport's WebSockets: accepts each (or hangs)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.sockets: list[MemorySocket] = []
        self.dialing = asyncio.Event()

    async def __call__(self, socket: MemorySocket) -> None:
        self.dialing.set()
        if self.hang:
            await asyncio.Event().wait()
        self.sockets.append(socket)


class ClientSide:
    """A client socket that asked for ``?model=m``; ``accept`` may hang."""

    def __init__(self, *, accept_hangs: bool = False) -> None:
        self.scope: dict[str, Any] = {"type": "websocket", "query_string": b"model=m",
                                      "subprotocols": [], "extensions": {}, "headers": []}
        self.query_params = {"model": "m"}
        self.accept_hangs = accept_hangs
        self.accepting = asyncio.Event()

    async def accept(self, subprotocol: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.accepting.set()
        if self.accept_hangs:
            await asyncio.Event().wait()

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "websocket.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        return None


def relay_for(dialer: Dialer) -> tuple[RealtimeRelay, EnginePool]:
    async def unused(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(404)

    transport = MemoryTransport(unused, sockets=dialer)
    pool = EnginePool([EngineConfig(name="a", url="http://a")],
                      lambda c: EngineClient(c.name, c.base_url, transport, TimeoutSettings()),
                      GatewayMetrics(), health_interval_s=1)
    engine = pool.engines[0]
    engine.healthy = True
    engine.cards = {"m": {"id": "m"}}
    metrics, resilience, scheduler = GatewayMetrics(), ResilienceSettings(retries=0), InOrder()
    drain = Drain(30, metrics)
    director = Director(pool, Admission(AdmissionSettings(), MemoryCounters()), None, drain,
                        metrics)
    connector = Connector(pool, scheduler, drain, metrics, resilience)
    relay = RealtimeRelay(connector, pool, director, WebSocketSettings(), drain)
    return relay, pool


async def test_a_session_cancelled_while_its_handshake_is_answered_closes_the_engine_socket(
        ) -> None:
    dialer = Dialer()
    relay, pool = relay_for(dialer)
    client = ClientSide(accept_hangs=True)
    session = asyncio.create_task(relay.serve(client))  # type: ignore[arg-type]
    await client.accepting.wait()
    session.cancel()
    await asyncio.gather(session, return_exceptions=True)
    assert [socket.closed_with is not None for socket in dialer.sockets] == [True]
    assert (relay.sessions, pool.engines[0].in_flight) == (0, 0)


async def test_a_half_open_probe_cancelled_while_dialing_lets_the_next_probe_through(
        ) -> None:
    dialer = Dialer(hang=True)
    relay, pool = relay_for(dialer)
    now = [0.0]
    breaker = CircuitBreaker(1, 10.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 11.0  # half-open: the next pick is the probe
    pool.engines[0].breaker = breaker
    session = asyncio.create_task(relay.serve(ClientSide()))  # type: ignore[arg-type]
    await dialer.dialing.wait()
    session.cancel()
    await asyncio.gather(session, return_exceptions=True)
    assert breaker.available()
