"""The key store contract, run against both backends (memory; Redis on a redis-server
of the test's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config.state import RedisSettings
from gateway.keys import ApiKey, KeyStore, MemoryKeyStore, hash_key
from gateway.keys.redis import RedisKeyStore
from gateway.observability.metrics import GatewayMetrics
from gateway.stores.redis_link import RedisLink
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeyStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    link = RedisLink(RedisSettings(url=server.url), GatewayMetrics())
    assert await link.probe()
    try:
        yield RedisKeyStore(link)
    finally:
        await link.aclose()


def _key(n: int, **fields: object) -> ApiKey:
    return ApiKey(f"k-{n:012x}", f"key {n}", hash_key(f"secret-{n}"), created=1000.5 + n,
                  **fields)  # type: ignore[arg-type]


async def test_a_record_round_trips_by_digest_and_id(store: KeyStore) -> None:
    full = _key(1, models=("a", "b"), rpm=5, tpm=100)
    bare = _key(2)
    await store.add(full)
    await store.add(bare)
    assert await store.find(hash_key("secret-1")) == full
    assert await store.get(bare.id) == bare
    assert await store.find(hash_key("unknown")) is None
    assert await store.get("k-000000000000") is None
    assert await store.all() == [full, bare]


async def test_an_id_or_digest_is_stored_once(store: KeyStore) -> None:
    await store.add(_key(1))
    with pytest.raises(ValueError, match="already stored"):
        await store.add(_key(1))
    with pytest.raises(ValueError, match="already stored"):
        await store.add(ApiKey("k-00000000ffff", "other", hash_key("secret-1")))
    assert len(await store.all()) == 1


async def test_revocation_keeps_the_key_and_its_first_time(store: KeyStore) -> None:
    key = _key(1, rpm=3)
    await store.add(key)
    revoked = await store.revoke(key.id, 2000.25)
    assert revoked is not None
    assert revoked.revoked_at == 2000.25
    assert revoked.rpm == 3
    again = await store.revoke(key.id, 3000.0)
    assert again is not None
    assert again.revoked_at == 2000.25
    found = await store.find(key.key_hash)
    assert found is not None
    assert found.revoked
    assert await store.revoke("k-000000000000", 2000.0) is None
    assert await store.all() == [revoked]
