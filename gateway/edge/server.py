"""The uvicorn server that runs a gateway app and drains it on SIGTERM/SIGINT.

On SIGTERM, ``/ready`` answers 503 at once while the server goes on accepting and serving
for ``drain.delay_s`` (load balancers and Kubernetes endpoints take a few seconds to see
it); then uvicorn stops accepting and waits for the open connections, and the gateway's
drain (:mod:`gateway.pipeline.drain`) gives the streams and WebSocket sessions in flight
``drain.timeout_s`` to finish (uvicorn's own hard deadline comes a little later, as a
backstop). SIGINT (Ctrl-C) skips the delay: nobody balances load onto a terminal. A
second SIGTERM during the delay ends it; a second SIGINT quits at once (uvicorn's force
exit). Given a loader, SIGHUP reads the configuration again and applies it
(:mod:`gateway.pipeline.reload`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from gateway.config.settings import Settings
from gateway.edge.gate import Edge
from gateway.edge.protocol import protocol_for
from gateway.edge.ws_protocol import DrainedWebSocketProtocol
from gateway.pipeline.drain import Drain
from gateway.pipeline.reload import Loader, reload

log = logging.getLogger("sluice.server")

BACKSTOP_S = 5.0
"""How long after the drain deadline uvicorn itself closes what is still open."""
GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (Python's default:
700). A request makes hundreds of short-lived objects, so the default ran a young
collection every few requests and a full one every few seconds (see :func:`settle_heap`)."""


def settle_heap() -> None:
    """Once the app has started, in a process of its own: collect the start-up garbage,
    then freeze what is left (modules, settings, the app; about 100,000 objects) so that
    no later collection walks it again, and make young collections rarer.

    Measured with 1,000 streams through one gateway: Python's collector took about 14 %
    of the gateway's CPU, each full collection 100 to 300 ms with the loop stopped (a
    dozen per 26 s run); with this, gateway CPU per request fell about 12 % (1.59 to
    1.78 ms -> 1.37 to 1.52 ms per 64-token stream) and one full collection was left."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def hold_hangups() -> None:
    """Block SIGHUP in this process (and what it starts) until a server given a loader
    has started: a reload asked for while starting waits for it rather than killing the
    process, SIGHUP's default."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


class GatewayServer(uvicorn.Server):
    """``own_process``: the server is its process's only work (``sluice serve``, a
    worker), so it may tune the process's garbage collector (:func:`settle_heap`) once
    started; tests that run servers inside their own process leave it off."""

    def __init__(self, app: Edge, settings: Settings, *, host: str | None = None,
                 port: int | None = None, own_process: bool = False,
                 reload: Loader | None = None) -> None:
        """``reload``: reads the configuration again on SIGHUP (None: SIGHUP is left
        alone)."""
        self.drain: Drain = app.state.drain
        self.own_process = own_process
        self.app_state = app.state
        self._load = reload
        self._reloads: set[asyncio.Task[bool]] = set()
        self.delay_s = settings.drain.delay_s
        self._delayed: asyncio.TimerHandle | None = None
        ws = settings.websocket
        super().__init__(uvicorn.Config(
            app, host=host or settings.host, port=settings.port if port is None else port,
            http=protocol_for(settings.limits), lifespan="on", log_config=None, access_log=False,
            # Nothing reads the client's address; X-Forwarded-* would only cost a wrapper.
            proxy_headers=False,
            ws=DrainedWebSocketProtocol, ws_max_size=ws.max_message_bytes,
            ws_ping_interval=ws.ping_interval_s,
            ws_ping_timeout=ws.ping_timeout_s, timeout_keep_alive=settings.limits.keep_alive_s,
            timeout_graceful_shutdown=int(settings.drain.timeout_s + BACKSTOP_S),
        ))

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._load is not None and not self.should_exit:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_hangup)
            # A SIGHUP that came while starting waited, blocked (see hold_hangups): now
            # it is delivered, and reloads.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        if self.own_process and not self.should_exit:
            settle_heap()

    def _on_hangup(self) -> None:
        """SIGHUP: reload the configuration (one reload at a time, in order)."""
        reconfigure = getattr(self.app_state, "reconfigure", None)
        if self._load is None or reconfigure is None or self.should_exit:
            log.warning("SIGHUP ignored: the gateway is starting or stopping")
            return
        task = asyncio.create_task(reload(self._load, reconfigure), name="config-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """However the server was told to stop (a signal, or ``should_exit`` set by the
        program that runs it), the drain begins as it stops accepting."""
        self.drain.begin()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal (called by uvicorn's handler, between two steps of the loop): the
        work is done on the loop, see the module docstring."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet, or any more
            self.drain.announce()
            super().handle_exit(sig, frame)
            return
        loop.call_soon_threadsafe(self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM and self.delay_s > 0 and not self.drain.announced:
            self.drain.announce()
            log.info("SIGTERM: /ready answers 503; still serving for %g s, then draining "
                     "(up to %g s)", self.delay_s, self.drain.timeout_s)
            self._delayed = asyncio.get_running_loop().call_later(
                self.delay_s, self._stop, sig)
            return
        self._stop(sig)

    def _stop(self, sig: int) -> None:
        """Stop accepting and drain; a second SIGINT once stopping quits at once."""
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        self.drain.begin()
        super().handle_exit(sig, None)
