"""Secure by default: a gateway reachable from other hosts needs a key."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field


class AuthSettings(BaseModel):
    """Authentication beyond the keys themselves (``api_keys``, ``admin.token``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_unauthenticated: bool = Field(
        default=False,
        description="let a gateway bound to a non-loopback host start with no api_keys "
                    "and no admin.token, so that anyone who reaches it may use it (a "
                    "loopback host never needs this)")


def is_loopback(host: str) -> bool:
    """``host`` only takes connections from this machine: 127.0.0.0/8, ::1, localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_to_others(host: str) -> str:
    """The refusal for a gateway bound to ``host`` (not loopback) with no key: one line."""
    return (f"host {host} is not loopback and no API key is set, so anyone who reaches "
            "this gateway could use it: set api_keys (or SLUICE_API_KEYS='[\"<key>\"]') "
            "or admin.token, or accept this with auth.allow_unauthenticated: true")
