"""The ``redis+sentinel://`` form of ``redis.url``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.redis_url import SentinelUrl, parse_sentinel_url
from gateway.config.state import RedisSettings


def test_sentinels_service_db_and_password() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b:26380"
                                "/mymaster/2")
    assert parsed == SentinelUrl((("10.0.0.1", 26379), ("sentinel-b", 26380)), "mymaster",
                                 2, None, "s@cret")
    assert "s@cret" not in repr(parsed)
    user = parse_sentinel_url("redis+sentinel://app:pw@h:1/svc")
    assert (user.username, user.password, user.db) == ("app", "pw", 0)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://h:26379", "the path is /service_name"),
    ("redis+sentinel://h:26379/svc/x", "the path is /service_name"),
    ("redis+sentinel://h/svc", "each sentinel is host:port"),
    ("redis+sentinel://h:1,:2/svc", "each sentinel is host:port"),
    ("redis+sentinel://h:99999/svc", "each sentinel is host:port"),
])
def test_a_malformed_sentinel_url_is_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisSettings(url=url)


def test_the_settings_take_the_sentinel_form() -> None:
    assert RedisSettings(url="redis+sentinel://h:26379/svc").url.startswith("redis+sentinel")
    with pytest.raises(ValidationError, match="redis\\+sentinel://"):
        RedisSettings(url="http://h:6379")
