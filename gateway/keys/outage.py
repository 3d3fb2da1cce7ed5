"""Managed keys through an outage of the shared store: a key store that remembers the
records it last read, and a rate limiter that falls back to this replica's own windows.

:class:`LastKnownKeys` wraps a shared :class:`~gateway.keys.KeyStore`. Every lookup
still reads the shared store; what it answers is kept per replica (SHA-256 digest ->
record, never the key itself) in a bounded LRU. While the store is unreachable a key
found there authenticates with its last known record (a revoked one stays revoked) and
the lookup counts in ``sluice_redis_bypassed{store="keys"}``; a key this replica has not
seen is a 503 (nothing to check it against). A revocation made through this replica
updates its entry at once; the Redis store also publishes it, so that the other
replicas update theirs (:meth:`LastKnownKeys.reload`).

:class:`OutageLimiter` wraps a shared :class:`~gateway.keys.RateLimiter`. While it is
unreachable, ``fail_open`` (``redis.fail_open``, default true) admits against a
:class:`~gateway.keys.MemoryRateLimiter` of this replica, with the key's own RPM and TPM
(each replica then holds the limit alone: N replicas admit up to N times it, never
without limit), and closed refuses with 503 and ``Retry-After``. Tokens charged during
the outage go to the local windows. Once the store answers again its windows are used
again, as they were (nothing is merged). Both count in
``sluice_redis_bypassed{store="limits"}``.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.core.keys import ApiKey, Limits
from gateway.keys.protocols import ALLOWED, Decision, KeyStore, RateLimiter
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable

KNOWN_KEYS = 10_000
"""Records a replica remembers by default (``redis.known_keys``)."""


class LastKnownKeys:
    """The :class:`~gateway.keys.KeyStore` protocol over a shared store, answering
    lookups from the records last read while that store is unreachable (see the module
    doc). The 503 for an unseen key keeps the store's ``Retry-After``."""

    def __init__(self, store: KeyStore, metrics: GatewayMetrics, *,
                 size: int = KNOWN_KEYS) -> None:
        self.store = store
        self._metrics = metrics
        self._size = size
        self._known: OrderedDict[str, ApiKey] = OrderedDict()
        self._unconfirmed = False
        """A full reread (after a (re)subscription) failed: the records are kept for the
        outage and read again at the next lookup that reaches the store."""

    def known(self, key_hash: str) -> ApiKey | None:
        """The record remembered for a digest (without touching its LRU place)."""
        return self._known.get(key_hash)

    def __len__(self) -> int:
        return len(self._known)

    async def add(self, key: ApiKey) -> None:
        await self.store.add(key)

    async def find(self, key_hash: str) -> ApiKey | None:
        try:
            key = await self.store.find(key_hash)
            if self._unconfirmed:
                await self.reload(None)
        except StoreUnavailable as exc:
            known = self._known.get(key_hash)
            if known is None:
                raise StoreUnavailable(
                    "the API key store is unreachable and this gateway has not seen this "
                    "key since it started, so it cannot be checked; retry shortly",
                    headers=exc.headers) from exc
            self._known.move_to_end(key_hash)
            self._metrics.redis_bypassed.labels("keys").inc()
            return known
        if key is None or key.key_hash != key_hash:
            self._known.pop(key_hash, None)
        else:
            self._remember(key)
        return key

    async def get(self, key_id: str) -> ApiKey | None:
        return await self.store.get(key_id)

    async def all(self) -> list[ApiKey]:
        return await self.store.all()

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        key = await self.store.revoke(key_id, at)
        if key is not None and key.key_hash in self._known:
            self._known[key.key_hash] = key
        return key

    async def reload(self, key_id: str | None) -> None:
        """Read again the remembered record of ``key_id`` (revoked on another replica),
        or of every remembered key when None (after a (re)subscription, which may have
        missed some). A single record that cannot be read again is forgotten (its key is
        a 503 while the store is down, never honoured past its revocation). When the
        full reread fails the records are kept and read again at the next lookup that
        reaches the store: a subscription reopens as a failover ends, when the store
        may still refuse for a moment, and forgetting every key then turned a replica's
        whole outage into 503s. A revocation missed in that gap is honoured only while
        the store stays unreachable, as any record read before the outage is."""
        if not self._known:
            self._unconfirmed = False
            return
        if key_id is not None:
            digests = [d for d, key in self._known.items() if key.id == key_id]
            for digest in digests:
                try:
                    fresh = await self.store.get(key_id)
                except StoreUnavailable:
                    fresh = None
                self._replace(digest, fresh)
            return
        try:
            by_id = {key.id: key for key in await self.store.all()}
        except StoreUnavailable:
            self._unconfirmed = True
            return
        self._unconfirmed = False
        for digest, key in list(self._known.items()):
            self._replace(digest, by_id.get(key.id))

    def _replace(self, digest: str, fresh: ApiKey | None) -> None:
        if fresh is None or fresh.key_hash != digest:
            self._known.pop(digest, None)
        elif digest in self._known:
            self._known[digest] = fresh

    def _remember(self, key: ApiKey) -> None:
        self._known[key.key_hash] = key
        self._known.move_to_end(key.key_hash)
        while len(self._known) > self._size:
            self._known.popitem(last=False)


class OutageLimiter:
    """The :class:`~gateway.keys.RateLimiter` protocol over a shared limiter, falling
    back to ``local`` (open) or refusing (closed) while it is unreachable (see the
    module doc). A refusal keeps the store's ``Retry-After``."""

    def __init__(self, shared: RateLimiter, local: RateLimiter, metrics: GatewayMetrics,
                 *, fail_open: bool) -> None:
        self.shared = shared
        self.local = local
        self._metrics = metrics
        self._fail_open = fail_open

    async def admit(self, key_id: str, limits: Limits) -> Decision:
        if not limits.any:
            return ALLOWED
        try:
            return await self.shared.admit(key_id, limits)
        except StoreUnavailable as exc:
            self._metrics.redis_bypassed.labels("limits").inc()
            if self._fail_open:
                return await self.local.admit(key_id, limits)
            retry = exc.headers.get("Retry-After", "1")
            raise StoreUnavailable(
                f"the rate limit store is unreachable and redis.fail_open is off, so key "
                f"{key_id}'s limits cannot be checked; retry in {retry} s",
                headers={"Retry-After": retry}) from exc

    async def charge(self, key_id: str, tokens: int) -> None:
        try:
            await self.shared.charge(key_id, tokens)
        except StoreUnavailable:
            self._metrics.redis_bypassed.labels("limits").inc()
            await self.local.charge(key_id, tokens)
