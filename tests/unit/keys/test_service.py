"""The key service and memory key store: hashing, identification, revocation, refusals."""

from __future__ import annotations

import pytest

from gateway.core.errors import KeyNotFound, RateLimited
from gateway.keys import KeyService, MemoryKeyStore, MemoryRateLimiter, hash_key


@pytest.fixture
def service() -> KeyService:
    return KeyService(MemoryKeyStore(), MemoryRateLimiter(clock=lambda: 50.0),
                      clock=lambda: 1_700_000_000.0)


async def test_a_key_is_stored_only_as_its_digest(service: KeyService) -> None:
    new = await service.create("ci", models=("m",), rpm=5)
    assert new.secret.startswith("sk-sluice-")
    assert len(new.secret) > 40
    stored = await service.store.get(new.record.id)
    assert stored is not None
    assert stored.key_hash == hash_key(new.secret)
    assert new.secret not in repr(stored)
    assert new.secret not in str(stored.public())
    assert "key_hash" not in stored.public()
    assert stored.public() == {"id": new.record.id, "object": "api_key", "name": "ci",
                               "models": ["m"], "rpm": 5, "tpm": None,
                               "created": 1_700_000_000, "revoked": False,
                               "revoked_at": None}


async def test_identify_finds_the_key_and_nothing_else(service: KeyService) -> None:
    new = await service.create("a")
    other = await service.create("b")
    assert (await service.identify(new.secret)) == new.record
    assert (await service.identify(other.secret)) == other.record
    assert await service.identify(new.secret + "x") is None
    assert await service.identify(hash_key(new.secret)) is None  # the digest is no key


async def test_revoked_keys_are_kept_and_marked(service: KeyService) -> None:
    new = await service.create("a")
    revoked = await service.revoke(new.record.id)
    assert revoked.revoked
    assert revoked.revoked_at == 1_700_000_000.0
    found = await service.identify(new.secret)
    assert found is not None
    assert found.revoked
    assert [key.id for key in await service.list()] == [new.record.id]
    with pytest.raises(KeyNotFound):
        await service.revoke("k-nope")


async def test_allowed_models(service: KeyService) -> None:
    every = (await service.create("any")).record
    some = (await service.create("some", models=("a", "b"))).record
    assert every.allows("whatever")
    assert some.allows("a")
    assert not some.allows("c")


async def test_refusal_names_the_limit_and_when(service: KeyService) -> None:
    key = (await service.create("a", rpm=2)).record
    await service.admit(key)
    await service.admit(key)
    with pytest.raises(RateLimited) as info:
        await service.admit(key)
    assert info.value.message == (f"key {key.id} is limited to 2 requests per minute; "
                                  "retry in 60 s")
    assert info.value.headers["Retry-After"] == "60"
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"


async def test_tokens_are_charged_only_to_keys_with_a_tpm(service: KeyService) -> None:
    limited = (await service.create("a", tpm=10)).record
    await service.charge(limited, 10)
    with pytest.raises(RateLimited, match="limited to 10 tokens per minute"):
        await service.admit(limited)
    free = (await service.create("b")).record
    await service.charge(free, 10**9)
    await service.admit(free)
