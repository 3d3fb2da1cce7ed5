"""Typed settings for engines found in DNS (key ``discovery`` of the settings).

Each source is a DNS name (a Kubernetes headless Service, say) whose A/AAAA or SRV
records list engines. The gateway re-resolves it every ``interval_s``: an address that
appears becomes an engine (routed to once a health check passes), one that disappears
is drained from routing (no new requests; those in flight finish). The engines of a
source share the options of its ``engine`` template: any field of an ``engines`` entry
except ``name``, ``url`` and ``managed``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from gateway.config.settings import EngineConfig

_NOT_TEMPLATED = ("name", "url", "managed")


class DiscoverySource(BaseModel):
    """One DNS name whose records are engines."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$",
        description="the source's label: its engines are named <name>-<ip>-<port> "
                    "(lowercase letters, digits and '-', at most 40 characters)")
    dns_name: str = Field(
        min_length=1, max_length=253,
        description="the name to resolve, e.g. vllm.llm.svc.cluster.local (a headless "
                    "Service) or _http._tcp.vllm.llm.svc.cluster.local for SRV")
    record: Literal["A", "AAAA", "SRV"] = Field(
        default="A",
        description="A or AAAA: each address is an engine on port; SRV: each record's "
                    "target (resolved to its addresses) on the record's port")
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description="the engines' port; required for A and AAAA, unused for SRV")
    scheme: Literal["http", "https"] = Field(
        default="http",
        description="how the engines are reached (by IP address: with https, their "
                    "certificates must name their addresses)")
    interval_s: float = Field(
        default=10.0, ge=0.1, le=3600,
        description="pause between two resolutions of dns_name")
    timeout_s: float = Field(
        default=2.0, gt=0, le=60,
        description="one resolution's bound (all its queries); a failed or timed-out "
                    "resolution keeps the engines last found and counts in "
                    "sluice_discovery_resolutions_total{outcome=\"error\"}")
    max_engines: int = Field(
        default=64, ge=1, le=1024,
        description="engines taken from one resolution at most (the lowest addresses "
                    "first); more are left out with a warning")
    nameservers: list[str] = Field(
        default_factory=list,
        description="DNS servers to ask, as ip or ip:port; empty: the system's "
                    "(/etc/resolv.conf)")
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="options every engine of this source shares: any field of an "
                    "engines entry except name, url and managed (max_loras, "
                    "max_lora_rank, ...)")

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            split_nameserver(server)
        return servers

    @model_validator(mode="after")
    def _consistent(self) -> DiscoverySource:
        if self.record != "SRV" and self.port is None:
            raise ValueError(f"discovery {self.name!r}: record {self.record} needs a port")
        named = sorted(set(_NOT_TEMPLATED) & set(self.engine))
        if named:
            raise ValueError(f"discovery {self.name!r}: engine sets {', '.join(named)}; "
                             "those come from DNS")
        from gateway.config.settings import EngineConfig  # settings imports this module

        EngineConfig(name=self.name, url="http://template.invalid", **self.engine)
        return self

    def engine_config(self, host: str, port: int) -> EngineConfig:
        """The :class:`~gateway.config.settings.EngineConfig` of the engine at
        ``host:port`` (an IP address)."""
        from gateway.config.settings import EngineConfig

        address = ipaddress.ip_address(host)
        netloc = f"[{address}]" if address.version == 6 else str(address)
        label = str(address).replace(":", "-")
        return EngineConfig(name=f"{self.name}-{label}-{port}",
                            url=f"{self.scheme}://{netloc}:{port}", **self.engine)


def split_nameserver(server: str) -> tuple[str, int]:
    """``ip`` or ``ip:port`` (``[v6]:port``) as (ip, port); ValueError when neither."""
    host, port = server, 53
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif server.count(":") == 1:
        host, _, number = server.partition(":")
        port = int(number)
    ipaddress.ip_address(host)  # raises ValueError with the bad value
    if not 1 <= port <= 65535:
        raise ValueError(f"nameserver {server!r}: port out of range")
    return host, port


def unique_sources(sources: list[DiscoverySource]) -> list[DiscoverySource]:
    """``sources``, checked for names used twice."""
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"discovery: source names used twice: {', '.join(twice)}")
    return sources


Sources = Annotated[list[DiscoverySource], AfterValidator(unique_sources)]
"""The ``discovery`` list: sources with distinct names."""
