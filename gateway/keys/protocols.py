"""The key store and rate limiter protocols.

Both are async because a shared backend (Redis) answers over the network. A rate
limiter's :meth:`RateLimiter.admit` is ONE atomic operation per request: check both
windows and record the request, or record nothing (a Redis backend runs it as one Lua
script, so that any number of gateway processes share each key's limits exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.core.keys import ApiKey, Limits

WINDOW_S = 60.0
"""The sliding window of both limits."""


class KeyStore(Protocol):
    """Managed API keys, found by the SHA-256 digest of the key."""

    async def add(self, key: ApiKey) -> None: ...

    async def find(self, key_hash: str) -> ApiKey | None:
        """The key whose digest is ``key_hash`` (revoked or not); None when none is."""
        ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        """Mark the key revoked (kept, so that its id stays taken and listed); the key
        as it now is, or None when there is no such key. Revoking twice keeps the first
        time."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """A limiter's answer: allowed, or which limit refused and when it frees."""

    allowed: bool
    limit: Literal["rpm", "tpm"] | None = None
    retry_after_s: float = 0.0


ALLOWED = Decision(True)


class RateLimiter(Protocol):
    """Per-key requests and tokens over a sliding :data:`WINDOW_S`."""

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        """Atomically: when fewer than ``limits.rpm`` requests were admitted in the last
        window and fewer than ``limits.tpm`` tokens were charged in it, record this
        request and allow it; else record nothing and say which limit refused (rpm
        first) and the seconds until enough of the window slides out."""
        ...

    async def charge(self, key_id: str, tokens: int) -> None:
        """Count ``tokens`` in the key's window now (after a request has finished: the
        tokens it actually streamed)."""
        ...
