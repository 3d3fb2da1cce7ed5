"""Which adapter an engine at its bound gives up for a new one.

The least recently used adapter with nothing running or waiting on the engine, by this
gateway or any other (the engine's own ``vllm:lora_requests_info``), and not pinned. An
adapter in use is never the one: when every resident adapter is in use, there is no
victim and the new adapter waits for one to become idle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    """An adapter loaded on an engine, as the choice sees it."""

    name: str
    last_used: float
    busy: bool
    pinned: bool = False


def victim(resident: Iterable[Resident]) -> str | None:
    """The adapter to unload, or None when each is busy or pinned."""
    idle = [r for r in resident if not r.busy and not r.pinned]
    if not idle:
        return None
    return min(idle, key=lambda r: (r.last_used, r.name)).name
