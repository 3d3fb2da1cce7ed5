"""The ``redis+sentinel://`` form of ``redis.url``: the sentinels to ask and the service
whose primary they name (connecting: :mod:`gateway.stores.redis_sentinel`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL (the password kept out of the repr)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_sentinel(url: str) -> bool:
    return url.lower().startswith(SCHEME)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of ``url``; a ``ValueError`` saying what is wrong (never quoting the
    password)."""
    if not is_sentinel(url):
        raise ValueError(f"a Sentinel URL starts with {SCHEME}")
    rest = url[len(SCHEME):]
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else unquote(user)
        if not colon:
            username = None
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("redis+sentinel: each sentinel is host:port, comma-separated "
                             "(redis+sentinel://h1:26379,h2:26379/service)")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("redis+sentinel: the path is /service_name or /service_name/db "
                         "(db a number)")
    return SentinelUrl(tuple(sentinels), unquote(parts[0]),
                       int(parts[1]) if len(parts) == 2 else 0, username, password)
