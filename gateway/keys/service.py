"""Managed API keys as the gateway uses them: identify a presented key, create, list
and revoke keys (the admin API), and apply a key's rate limits."""

from __future__ import annotations

import contextlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.errors import KeyNotFound, RateLimited
from gateway.core.keys import ApiKey, hash_key, new_key_id, new_secret
from gateway.keys.protocols import KeyStore, RateLimiter
from gateway.stores.protocols import StoreUnavailable

_UNITS = {"rpm": "requests", "tpm": "tokens"}


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created: its record, and the key itself (shown this once only)."""

    record: ApiKey
    secret: str


class KeyService:
    """The key store and rate limiter behind one small API."""

    def __init__(self, store: KeyStore, limiter: RateLimiter, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.limiter = limiter
        self._clock = clock
        self._revoked: set[str] = set()
        """Ids of keys revoked while this replica ran (through it, or published by
        another): what an open socket's key is checked against per request."""

    async def identify(self, presented: str) -> ApiKey | None:
        """The managed key ``presented`` is (revoked or not); None when it is none.

        Looked up by digest: what a lookup's timing could reveal is about the digest,
        never the key; the digests are then compared in constant time all the same."""
        digest = hash_key(presented)
        key = await self.store.find(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            return None
        return key

    async def create(self, name: str, *, models: tuple[str, ...] = (),
                     rpm: int | None = None, tpm: int | None = None) -> NewKey:
        secret = new_secret()
        record = ApiKey(new_key_id(), name, hash_key(secret), models, rpm, tpm,
                        created=self._clock())
        await self.store.add(record)
        return NewKey(record, secret)

    async def list(self) -> list[ApiKey]:
        return await self.store.all()

    async def revoke(self, key_id: str) -> ApiKey:
        key = await self.store.revoke(key_id, self._clock())
        if key is None:
            raise KeyNotFound(f"no API key with id '{key_id}'", param="id")
        self._revoked.add(key.id)
        return key

    def revoked(self, key: ApiKey) -> bool:
        """Whether ``key``, valid when it was presented, has been revoked since (as far
        as this replica knows: no I/O; sockets opened with it check it per request)."""
        return key.revoked or key.id in self._revoked

    async def revoked_elsewhere(self, key_id: str | None) -> None:
        """A revocation another replica published; None when the subscription (re)opened
        and may have missed some: every key is read again for those revoked."""
        if key_id is not None:
            self._revoked.add(key_id)
            return
        with contextlib.suppress(StoreUnavailable):  # else at the next (re)subscription
            self._revoked.update(key.id for key in await self.store.all() if key.revoked)

    async def admit(self, key: ApiKey) -> None:
        """Count one request against the key's limits; :class:`RateLimited` (429 with
        ``Retry-After``) when its minute is spent."""
        if not key.limits.any:
            return
        decision = await self.limiter.admit(key.id, key.limits)
        if decision.allowed:
            return
        assert decision.limit is not None
        limit = key.rpm if decision.limit == "rpm" else key.tpm
        retry_after = max(1, math.ceil(decision.retry_after_s))
        raise RateLimited(
            f"key {key.id} is limited to {limit} {_UNITS[decision.limit]} per minute; "
            f"retry in {retry_after} s", limit=decision.limit, retry_after_s=retry_after)

    async def charge(self, key: ApiKey, tokens: int) -> None:
        """Count the tokens a finished request streamed (only keys with a TPM limit)."""
        if key.tpm is not None and tokens > 0:
            await self.limiter.charge(key.id, tokens)
