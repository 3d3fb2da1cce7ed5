"""In-process backends of the key store and the rate limiter (one gateway process)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable

from gateway.core.keys import ApiKey, Limits
from gateway.keys.protocols import ALLOWED, WINDOW_S, Decision


class MemoryKeyStore:
    def __init__(self) -> None:
        self._by_id: dict[str, ApiKey] = {}
        self._ids_by_hash: dict[str, str] = {}

    async def add(self, key: ApiKey) -> None:
        if key.id in self._by_id or key.key_hash in self._ids_by_hash:
            raise ValueError(f"key {key.id} is already stored")
        self._by_id[key.id] = key
        self._ids_by_hash[key.key_hash] = key.id

    async def find(self, key_hash: str) -> ApiKey | None:
        key_id = self._ids_by_hash.get(key_hash)
        return None if key_id is None else self._by_id[key_id]

    async def get(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    async def all(self) -> list[ApiKey]:
        return list(self._by_id.values())

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        key = self._by_id.get(key_id)
        if key is None or key.revoked:
            return key
        self._by_id[key_id] = revoked = dataclasses.replace(key, revoked_at=at)
        return revoked


class _Window:
    """One key's last minute: admission times, and tokens per whole second."""

    __slots__ = ("requests", "spent", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[list[int]] = deque()
        """``[second, tokens]`` buckets, oldest first."""
        self.spent = 0

    def slide(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and _bucket_end(self.tokens[0][0]) <= now:
            self.spent -= self.tokens.popleft()[1]


def _bucket_end(second: int) -> float:
    """When a bucket's tokens leave the window: they count for 60 to 61 s, never less."""
    return second + 1 + WINDOW_S


class MemoryRateLimiter:
    """Sliding-window limits: an exact log of admissions for RPM (at most ``rpm`` entries
    per key) and one-second token buckets for TPM (at most 61 per key).

    :meth:`admit` never awaits, so on one event loop it is atomic by construction."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        if not limits.any:
            return ALLOWED
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.slide(now)
        if limits.rpm is not None and len(window.requests) >= limits.rpm:
            # The oldest admissions that must leave before one more fits.
            oldest = window.requests[len(window.requests) - limits.rpm]
            return Decision(False, "rpm", oldest + WINDOW_S - now)
        if limits.tpm is not None and window.spent >= limits.tpm:
            left = window.spent
            for second, tokens in window.tokens:
                left -= tokens
                if left < limits.tpm:
                    return Decision(False, "tpm", _bucket_end(second) - now)
        if limits.rpm is not None:
            window.requests.append(now)
        return ALLOWED

    async def charge(self, key_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self._clock()
        window = self._windows.setdefault(key_id, _Window())
        window.slide(now)
        second = math.floor(now)
        if window.tokens and window.tokens[-1][0] == second:
            window.tokens[-1][1] += tokens
        else:
            window.tokens.append([second, tokens])
        window.spent += tokens
