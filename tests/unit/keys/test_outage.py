"""Managed keys while the shared key store and limiter are unreachable: last known
records (revoked ones stay revoked, unseen keys are a 503), limits held by this replica
alone (fail open) or refused with 503 (fail closed), and the shared windows once back."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.errors import RateLimited
from gateway.edge.middleware import Auth
from gateway.keys import ApiKey, KeyService, Limits, MemoryKeyStore, MemoryRateLimiter
from gateway.keys.outage import LastKnownKeys, OutageLimiter
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.protocols import StoreUnavailable


class Outage:
    """Whether the shared store is down; its fakes raise while it is."""

    def __init__(self) -> None:
        self.down = False

    def check(self) -> None:
        if self.down:
            raise StoreUnavailable("redis is down (connection refused)",
                                   headers={"Retry-After": "2"})  # as RedisLink says


class SharedKeyStore(MemoryKeyStore):
    """The memory key store, unreachable during the outage."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    async def add(self, key: ApiKey) -> None:
        self.outage.check()
        await super().add(key)

    async def find(self, key_hash: str) -> ApiKey | None:
        self.outage.check()
        return await super().find(key_hash)

    async def get(self, key_id: str) -> ApiKey | None:
        self.outage.check()
        return await super().get(key_id)

    async def all(self) -> list[ApiKey]:
        self.outage.check()
        return await super().all()

    async def revoke(self, key_id: str, at: float) -> ApiKey | None:
        self.outage.check()
        return await super().revoke(key_id, at)


class SharedLimiter(MemoryRateLimiter):
    """The memory limiter, unreachable during the outage."""

    def __init__(self, outage: Outage, clock: Any) -> None:
        super().__init__(clock=clock)
        self.outage = outage

    async def admit(self, key_id: str, limits: Limits) -> Any:
        self.outage.check()
        return await super().admit(key_id, limits)

    async def charge(self, key_id: str, tokens: int) -> None:
        self.outage.check()
        await super().charge(key_id, tokens)


class Replica:
    """One gateway replica's key service over the shared fakes."""

    def __init__(self, *, fail_open: bool = True, size: int = 100) -> None:
        self.outage = Outage()
        self.metrics = GatewayMetrics()
        self.store = SharedKeyStore(self.outage)
        self.known = LastKnownKeys(self.store, self.metrics, size=size)
        clock = lambda: 500.0  # noqa: E731 - one instant: nothing slides out of a window
        self.shared = SharedLimiter(self.outage, clock)
        self.local = MemoryRateLimiter(clock=clock)
        self.service = KeyService(
            self.known, OutageLimiter(self.shared, self.local, self.metrics,
                                      fail_open=fail_open),
            clock=lambda: 1_700_000_000.0)

    def bypassed(self, store: str) -> float:
        return self.metrics.registry.get_sample_value(
            "sluice_redis_bypassed_total", {"store": store}) or 0.0


async def test_a_key_seen_before_authenticates_with_its_last_known_record() -> None:
    replica = Replica()
    new = await replica.service.create("ci", models=("m",), rpm=5)
    assert await replica.service.identify(new.secret) == new.record
    replica.outage.down = True
    assert await replica.service.identify(new.secret) == new.record
    assert await replica.service.identify(new.secret) == new.record
    assert replica.bypassed("keys") == 2


async def test_a_key_not_seen_by_this_replica_is_a_503_naming_the_key_store() -> None:
    replica = Replica()
    seen = await replica.service.create("seen")
    unseen = await replica.service.create("unseen")  # created here, never presented
    await replica.service.identify(seen.secret)
    replica.outage.down = True
    for secret in (unseen.secret, "sk-sluice-never-made"):
        with pytest.raises(StoreUnavailable) as info:
            await replica.service.identify(secret)
        assert info.value.status_code == 503
        assert "API key store is unreachable" in info.value.message
        assert "not seen this key" in info.value.message
        assert info.value.headers["Retry-After"] == "2"
    assert replica.bypassed("keys") == 0


async def test_a_revocation_through_this_replica_updates_its_record_at_once() -> None:
    replica = Replica()
    new = await replica.service.create("ci")
    await replica.service.identify(new.secret)
    await replica.service.revoke(new.record.id)
    replica.outage.down = True
    found = await replica.service.identify(new.secret)
    assert found is not None
    assert found.revoked


async def test_a_revoked_key_is_refused_at_the_edge_during_the_outage() -> None:
    replica = Replica()
    live = await replica.service.create("live")
    gone = await replica.service.create("gone")
    for new in (live, gone):
        await replica.service.identify(new.secret)
    await replica.service.revoke(gone.record.id)
    replica.outage.down = True
    assert await _status(replica.service, live.secret) == (200, None)
    assert await _status(replica.service, gone.secret) == (401, "API key has been revoked")
    status, message = await _status(replica.service, "sk-sluice-never-seen")
    assert status == 503
    assert message is not None
    assert "API key store is unreachable" in message


async def test_a_revocation_on_another_replica_reaches_this_one_by_reload() -> None:
    replica = Replica()
    new = await replica.service.create("ci")
    await replica.service.identify(new.secret)
    await replica.store.revoke(new.record.id, 1.0)  # another replica, same store
    await replica.known.reload(new.record.id)
    replica.outage.down = True
    found = await replica.service.identify(new.secret)
    assert found is not None
    assert found.revoked


async def test_a_full_reload_refreshes_every_record_and_a_failed_one_retries() -> None:
    replica = Replica()
    one, two = await replica.service.create("one"), await replica.service.create("two")
    for new in (one, two):
        await replica.service.identify(new.secret)
    await replica.store.revoke(two.record.id, 1.0)
    await replica.known.reload(None)
    assert replica.known.known(one.record.key_hash) == one.record
    revoked = replica.known.known(two.record.key_hash)
    assert revoked is not None
    assert revoked.revoked
    # A subscription that reopens while the store still refuses (the end of a failover):
    # the records are kept for the outage rather than every key turning into a 503 ...
    replica.outage.down = True
    await replica.known.reload(None)
    assert await _status(replica.service, one.secret) == (200, None)
    assert await _status(replica.service, two.secret) == (401, "API key has been revoked")
    # ... and read again at the next lookup that reaches the store, so a revocation
    # missed meanwhile holds from then on, through the next outage too.
    replica.outage.down = False
    await replica.store.revoke(one.record.id, 2.0)
    await replica.service.identify(two.secret)
    replica.outage.down = True
    assert await _status(replica.service, one.secret) == (401, "API key has been revoked")
    # A single record that cannot be read again is forgotten: a 503, never honoured.
    await replica.known.reload(one.record.id)
    with pytest.raises(StoreUnavailable):
        await replica.service.identify(one.secret)


async def test_the_records_are_a_bounded_lru_of_digests() -> None:
    replica = Replica(size=2)
    keys = [await replica.service.create(name) for name in ("a", "b", "c")]
    await replica.service.identify(keys[0].secret)
    await replica.service.identify(keys[1].secret)
    await replica.service.identify(keys[0].secret)  # a is now the most recent
    await replica.service.identify(keys[2].secret)  # b, the least recent, leaves
    assert len(replica.known) == 2
    replica.outage.down = True
    assert await replica.service.identify(keys[0].secret) == keys[0].record
    assert await replica.service.identify(keys[2].secret) == keys[2].record
    with pytest.raises(StoreUnavailable):
        await replica.service.identify(keys[1].secret)
    for new in keys:
        assert new.secret not in repr(replica.known._known)


async def test_a_key_the_store_no_longer_has_is_forgotten() -> None:
    replica = Replica()
    new = await replica.service.create("ci")
    await replica.service.identify(new.secret)
    replica.store._ids_by_hash.clear()  # the store lost it (flushed)
    assert await replica.service.identify(new.secret) is None
    replica.outage.down = True
    with pytest.raises(StoreUnavailable):
        await replica.service.identify(new.secret)


async def test_open_limits_hold_each_keys_rpm_in_this_replica() -> None:
    replica = Replica(fail_open=True)
    key = (await replica.service.create("ci", rpm=3)).record
    replica.outage.down = True
    for _ in range(3):
        await replica.service.admit(key)
    with pytest.raises(RateLimited) as info:
        await replica.service.admit(key)
    assert info.value.status_code == 429
    assert info.value.headers["Retry-After"] == "60"
    assert replica.bypassed("limits") == 4


async def test_open_limits_charge_tokens_to_this_replica() -> None:
    replica = Replica(fail_open=True)
    key = (await replica.service.create("ci", tpm=10)).record
    replica.outage.down = True
    await replica.service.admit(key)
    await replica.service.charge(key, 10)
    with pytest.raises(RateLimited, match="limited to 10 tokens per minute"):
        await replica.service.admit(key)
    assert replica.bypassed("limits") == 3


async def test_closed_limits_refuse_with_a_503_and_retry_after() -> None:
    replica = Replica(fail_open=False)
    limited = (await replica.service.create("ci", rpm=3)).record
    unlimited = (await replica.service.create("free")).record
    replica.outage.down = True
    with pytest.raises(StoreUnavailable) as info:
        await replica.service.admit(limited)
    assert info.value.status_code == 503
    assert info.value.headers["Retry-After"] == "2"
    assert info.value.body()["error"] == {
        "message": f"the rate limit store is unreachable and redis.fail_open is off, so "
                   f"key {limited.id}'s limits cannot be checked; retry in 2 s",
        "type": "service_unavailable", "param": None, "code": "store_unavailable"}
    await replica.service.admit(unlimited)  # no limit to check
    assert (await replica.local.admit(limited.id, Limits(rpm=1))).allowed  # none counted
    assert replica.bypassed("limits") == 1


async def test_once_back_the_shared_windows_are_used_again_unmerged() -> None:
    replica = Replica(fail_open=True)
    key = (await replica.service.create("ci", rpm=2)).record
    await replica.service.admit(key)  # shared: 1 of 2
    replica.outage.down = True
    await replica.service.admit(key)
    await replica.service.admit(key)  # local: 2 of 2
    with pytest.raises(RateLimited):
        await replica.service.admit(key)
    replica.outage.down = False
    await replica.service.admit(key)  # shared: 2 of 2, the local ones not added
    with pytest.raises(RateLimited):
        await replica.service.admit(key)
    assert replica.bypassed("limits") == 3


async def _status(service: Any, token: str) -> tuple[int, str | None]:
    """The status the edge's key check answers for ``token`` (200: passed on), and the
    error message."""
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", f"Bearer {token}".encode())],
             "state": {"keys": service}}
    refusal = await Auth(api_keys=[], managed_keys=True).check(scope)
    if refusal is None:
        return 200, None
    return refusal.status_code, refusal.message


class DownKeys:
    """A key service whose store cannot be read at all."""

    async def identify(self, token: str) -> None:
        raise StoreUnavailable("the shared store is unavailable")


async def test_a_key_lookup_failing_in_the_store_is_a_503_never_a_500() -> None:
    assert await _status(DownKeys(), "sk-sluice-abc") == (
        503, "the shared store is unavailable")
