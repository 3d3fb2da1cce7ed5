"""A gateway reachable from other hosts needs a key, or an explicit opt-out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.auth import is_loopback
from gateway.config.settings import Settings

KEY = "sk-secure-default-0123456789"
TOKEN = "admin-token-" + "x" * 32


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost",
                                  "LOCALHOST"])
def test_loopback_hosts_stay_open(host: str) -> None:
    assert is_loopback(host)
    assert not Settings(host=host).auth_required


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "gateway.example",
                                  "127.0.0.1.example"])
def test_other_hosts_without_a_key_are_refused_in_one_line(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ValidationError) as caught:
        Settings(host=host)
    message = caught.value.errors()[0]["msg"]
    assert "\n" not in message
    for way_out in ("api_keys", "SLUICE_API_KEYS", "admin.token",
                    "auth.allow_unauthenticated: true"):
        assert way_out in message


def test_a_key_a_token_or_the_explicit_opt_out_lets_it_start() -> None:
    assert Settings(host="0.0.0.0", api_keys=[KEY]).auth_required
    assert Settings(host="0.0.0.0", admin={"token": TOKEN}).auth_required
    opted_out = Settings(host="0.0.0.0", auth={"allow_unauthenticated": True})
    assert not opted_out.auth_required


def test_keys_from_the_environment_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_API_KEYS", f'["{KEY}"]')
    assert Settings(host="0.0.0.0").api_keys == [KEY]
