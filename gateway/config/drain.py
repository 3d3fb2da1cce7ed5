"""How the gateway stops: first it tells load balancers, then it drains.

See :mod:`gateway.pipeline.drain` for the timeline a SIGTERM starts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DrainSettings(BaseModel):
    """The drain a SIGTERM starts: ``/ready`` answers 503 for ``delay_s`` while every
    request is still served, then new connections are refused and the streams in flight
    get ``timeout_s`` to finish."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    delay_s: float = Field(
        default=5.0, ge=0, le=600,
        description="SIGTERM: /ready answers 503 this long before the gateway stops "
                    "accepting, while it still serves everything that arrives, so load "
                    "balancers and Kubernetes endpoints stop sending first (SIGINT skips "
                    "it)")
    timeout_s: float = Field(
        default=30.0, ge=0, le=3600,
        description="once it stops accepting: in-flight streams and WebSocket sessions "
                    "get this long to finish; then each stream ends with an error event "
                    "and each socket is closed (1001)")
