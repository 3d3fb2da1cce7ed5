"""The uvicorn server that runs a gateway app and drains it on SIGTERM/SIGINT.

uvicorn already stops accepting connections on a signal and waits for the open ones;
this adds the gateway's side: ``/ready`` turns 503 at once (load balancers stop
sending), and after ``drain_timeout_s`` the upstream streams still open are closed so
their clients get an error event and ``[DONE]`` rather than a cut connection (uvicorn's
own hard deadline comes a little later, as a backstop).
"""

from __future__ import annotations

from types import FrameType

import uvicorn

from gateway.config.settings import Settings
from gateway.edge.gate import Edge
from gateway.edge.protocol import protocol_for
from gateway.pipeline.drain import Drain

BACKSTOP_S = 5.0
"""How long after the drain deadline uvicorn itself closes what is still open."""


class GatewayServer(uvicorn.Server):
    def __init__(self, app: Edge, settings: Settings, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.drain: Drain = app.state.drain
        ws = settings.websocket
        super().__init__(uvicorn.Config(
            app, host=host or settings.host, port=settings.port if port is None else port,
            http=protocol_for(settings.limits), lifespan="on", log_config=None, access_log=False,
            # Nothing reads the client's address; X-Forwarded-* would only cost a wrapper.
            proxy_headers=False,
            ws_max_size=ws.max_message_bytes, ws_ping_interval=ws.ping_interval_s,
            ws_ping_timeout=ws.ping_timeout_s,
            timeout_graceful_shutdown=int(settings.resilience.drain_timeout_s + BACKSTOP_S),
        ))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.begin()
        super().handle_exit(sig, frame)
