"""``redis+sentinel://`` URLs: a Redis primary found through Sentinel, followed across a
failover.

``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` names
the sentinels and the service they watch. The password (and user) are the data nodes'
(primary and replicas); the sentinels are asked without one. Every new connection asks
a sentinel where the primary is, so after a failover the connections made once the
replica is promoted go to it; a connection still open to the old primary fails (or, if
that node comes back as a replica, its write is refused as read-only and the connection
dropped) and the link's probe reconnects (see :mod:`gateway.stores.redis_link`).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from gateway.config.redis_url import is_sentinel, parse_sentinel_url

__all__ = ["is_sentinel", "sentinel_client"]

class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's primary lookup with the bounded wait of a blocking pool (a full pool
    waits ``timeout`` for a connection instead of failing at once)."""


def sentinel_client(url: str, **connection: Any) -> Redis:
    """A client of the primary that ``url``'s sentinels name. ``connection``: the pool
    and socket settings (``max_connections``, ``timeout``, ``socket_timeout``, ...); the
    sentinels are asked with the same socket timeouts."""
    parsed = parse_sentinel_url(url)
    sockets = {k: v for k, v in connection.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(parsed.sentinels),  # type: ignore[no-untyped-call]
                        sentinel_kwargs=sockets)
    client: Redis = sentinel.master_for(
        parsed.service, redis_class=Redis, connection_pool_class=_BlockingSentinelPool,
        db=parsed.db, username=parsed.username, password=parsed.password, **connection)
    return client
