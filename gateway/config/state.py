"""Settings of the state the gateway keeps: the response cache and the shared store
(Redis). Re-exported by :mod:`gateway.config.settings`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config.redis_url import is_sentinel, parse_sentinel_url


class CacheSettings(BaseModel):
    """The response cache: identical deterministic requests answered from a store, and
    identical requests in flight sharing one upstream call (see the response cache
    page, ``docs/explanation/cache.md``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description="false: nothing is stored or answered from the store, and identical "
                    "requests in flight do not share a call: each goes to an engine")
    ttl_s: float = Field(default=300.0, gt=0, description="how long an answer is kept")
    max_entry_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger answers are not stored")
    max_entries: int = Field(default=10_000, ge=1, description="in-memory store: entries")
    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="in-memory store: bytes in all")
    shared_across_keys: bool = Field(
        default=False, description="one key space for every API key; by default a key's "
                                   "answers are never served to another key")
    coalesce: bool = Field(
        default=True, description="identical cacheable requests in flight share one "
                                  "upstream call (across replicas with a shared store)")
    follow_wait_s: float = Field(
        default=30.0, gt=0,
        description="across replicas: longest wait of a request for the answer another "
                    "replica's identical request is making, before making its own call; "
                    "also how long that replica's lease lasts if it crashes")


class RedisSettings(BaseModel):
    """The shared state store. An empty ``url`` keeps every store in memory (one
    gateway); a ``redis://`` (or ``rediss://``, ``unix://``) URL shares admission
    counts, the response cache, adapter placement, version policies and per-version
    measurements between every replica pointed at it.

    With a URL, managed API keys and their RPM/TPM windows live there too. While Redis
    is down a managed key this replica has looked up before (one of the last
    ``known_keys``) authenticates with the record it last read, revoked ones staying
    revoked; a key it has not seen is a 503 (static ``api_keys`` always work).

    ``fail_open`` (default true) decides what limits do while Redis is down. Open: count
    in this process only, with the same limits (each replica then enforces them alone, so
    the fleet total is bounded by replicas x limit, never unlimited): admission slots,
    and each managed key's RPM and TPM. Closed: refuse with 503 and ``Retry-After`` (the
    store is down; the client is not over a limit). Open is the default because the
    counters protect engines that have their own queues, and a key's limits share its
    traffic out fairly rather than guard a hard budget: an outage of the state store
    should degrade the limits' precision, not turn into an outage of the gateway. Close
    it for limits that must never be exceeded (a paid quota)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        default="",
        description="redis://host:port/db (rediss://, unix://), or "
                    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db] "
                    "for the primary that Sentinel names, followed across failovers; empty: "
                    "in-memory stores (no Redis)")
    max_connections: int = Field(default=64, ge=1, description="pooled connections")
    connect_timeout_s: float = Field(
        default=1.0, gt=0,
        description="opening a connection to Redis; past it the call fails and Redis counts "
                    "as down until a probe answers. A whole call is bounded by this plus "
                    "2 x command_timeout_s")
    command_timeout_s: float = Field(
        default=0.5, gt=0, description="one command (a pool wait included); past it the "
                                       "call counts as failed and Redis as down")
    key_prefix: str = Field(
        default="sluice:", max_length=64,
        description="put as it is before every key and pub/sub channel name: replicas "
                    "share state only with the same url and prefix")
    fail_open: bool = Field(
        default=True,
        description="while Redis is down: true counts admission slots and managed keys' "
                    "RPM/TPM in each process alone; false answers 503 instead (admission "
                    "counts every request that goes to an engine; see above)")
    probe_interval_s: float = Field(
        default=1.0, gt=0, description="PING period: drives sluice_redis_up, /ready and "
                                       "recovery, and refreshes this replica's slot lease")
    slot_ttl_s: float = Field(
        default=15.0, gt=0, description="admission slots of a replica that stopped "
                                       "refreshing its lease (crashed) expire after this")
    cache_max_entry_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="larger cached answers are not stored")
    history_size: int = Field(default=20, ge=1, description="version policies kept per alias")
    known_keys: int = Field(
        default=10_000, ge=0, description="managed keys whose last read record this replica "
                                          "keeps (LRU) to authenticate them while Redis is "
                                          "down; 0: none (every managed key is then a 503)")
    measure_flush_s: float = Field(
        default=0.5, gt=0, le=60, description="each replica adds the per-version "
                                              "measurements it counted to Redis this often")

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if is_sentinel(url):
            parse_sentinel_url(url)
        elif url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis.url must start with redis://, rediss://, unix:// or "
                             "redis+sentinel:// (or be empty for in-memory stores)")
        return url

    @model_validator(mode="after")
    def _lease_outlives_beats(self) -> RedisSettings:
        if self.slot_ttl_s < 3 * self.probe_interval_s:
            raise ValueError("redis.slot_ttl_s must be at least 3 x probe_interval_s, so "
                             "that one late probe does not expire a live replica's slots")
        return self
