"""Engines joining and leaving the pool while serving, engines found in DNS (a real UDP
DNS server on a free port), and what a configuration reload applies or refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.config.discovery import DiscoverySource
from gateway.config.fleet import RoutingSettings
from gateway.config.settings import EngineConfig, Settings, TimeoutSettings
from gateway.core.errors import EngineUnavailable, SluiceError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.admission import Admission
from gateway.pipeline.reload import Reconfigure, needs_restart
from gateway.scheduling import Scheduler
from gateway.stores.memory import MemoryCounters
from gateway.upstream.client import EngineClient
from gateway.upstream.discovery import Discovery, ResolveFailed, resolve, resolver_for
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport
from gateway.upstream.pool import EnginePool
from tests.dns_server import DnsServer
from tests.unit.scheduling.fakes import request

MODELS = orjson.dumps({"object": "list", "data": [{"id": "m"}]})


class Fleet:
    """In-memory engines, each up unless named in ``down``."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.transport = MemoryTransport(self.answer)
        self.metrics = GatewayMetrics()

    async def answer(self, request: MemoryRequest) -> MemoryResponse:
        host, path = request.url.split("//")[1].split("/", 1)
        if host in self.down:
            return MemoryResponse(503, b"")
        return MemoryResponse(200, MODELS if path == "v1/models" else b"")

    def pool(self, *names: str) -> EnginePool:
        return EnginePool(
            [EngineConfig(name=n, url=f"http://{n}") for n in names],
            lambda c: EngineClient(c.name, c.base_url, self.transport, TimeoutSettings()),
            self.metrics, health_interval_s=1)

    def series(self, engine: str) -> set[str]:
        """The metric families with a series labelled with ``engine``."""
        return {family.name for family in self.metrics.registry.collect()
                for sample in family.samples if sample.labels.get("engine") == engine}


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    yield server
    server.close()


async def test_a_new_engine_takes_requests_only_once_a_health_check_passes() -> None:
    fleet = Fleet()
    pool = fleet.pool("a")
    await pool.refresh()
    fleet.down.add("b")
    added = await pool.add(EngineConfig(name="b", url="http://b"))
    assert [e.name for e in pool.engines] == ["a", "b"]
    assert not added.routable
    assert [e.name for e in pool.routable_for("m")] == ["a"]
    fleet.down.clear()
    await pool.refresh()
    assert [e.name for e in pool.routable_for("m")] == ["a", "b"]
    with pytest.raises(ValueError, match="already in the pool"):
        await pool.add(EngineConfig(name="b", url="http://b"))


async def test_a_removed_engine_finishes_its_requests_then_its_series_go() -> None:
    fleet = Fleet()
    pool = fleet.pool("a", "b")
    await pool.refresh()
    before = pool.engines
    b = before[1]
    with pool.lease(b):
        assert pool.remove("b") is b
        assert before == [pool.engines[0], b], "a list taken before is not edited"
        assert [e.name for e in pool.engines] == ["a"]
        assert not b.routable
        assert "sluice_engine_in_flight" in fleet.series("b")  # still counting it
        await pool.refresh()  # the loop no longer checks it
        pool.mark_down(b, _error())  # a failure on it is not published either
    assert b.in_flight == 0
    assert fleet.series("b") == set()
    assert pool.remove("b") is None
    assert "sluice_engine_up" in fleet.series("a")


async def test_an_engine_back_under_its_name_keeps_its_series() -> None:
    fleet = Fleet()
    pool = fleet.pool("a", "b")
    await pool.refresh()
    old = pool.engines[1]
    with pool.lease(old):
        pool.remove("b")
        await pool.add(EngineConfig(name="b", url="http://b"))
    assert "sluice_engine_up" in fleet.series("b"), "the old one ending left the new alone"
    assert [e.name for e in pool.routable_for("m")] == ["a", "b"]


def test_a_bad_routing_reload_keeps_the_plans_in_use() -> None:
    metrics = GatewayMetrics()
    scheduler = Scheduler(RoutingSettings.model_validate(
        {"default": {"strategy": "round_robin"}}), metrics)
    engines = Fleet().pool("a", "b").engines
    for engine in engines:
        engine.healthy, engine.cards = True, {"m": {}}
    bad = RoutingSettings.model_validate({"profiles": {"p": {"scorers": {"nope": 1}}},
                                          "default": {"profile": "p"}})
    with pytest.raises(Exception, match="nope"):
        scheduler.reconfigure(bad)
    picks = [scheduler.schedule(request(), engines).name for _ in range(4)]
    assert picks == ["a", "b", "a", "b"], "still round robin"
    scheduler.reconfigure(RoutingSettings.model_validate(
        {"default": {"scorers": {"session": 2}}, "profiles": {}}))
    picks = [scheduler.schedule(request(session_key="s"), engines).name for _ in range(4)]
    assert len(set(picks)) == 1, "the new weights route by session"
    decisions = {s.labels["strategy"] for family in metrics.registry.collect()
                 for s in family.samples if family.name == "sluice_routing_decisions"}
    assert decisions == {"round_robin", "least_loaded"}


def test_a_reload_lists_the_settings_it_cannot_apply() -> None:
    old = Settings(default_engine=False)
    new = Settings(default_engine=False, port=9000, engines=[{"name": "x", "url": "http://x"}],
                   routing={"default": {"strategy": "round_robin"}, "scrape_interval_s": 1},
                   admission={"max_in_flight_per_engine": 3})
    assert needs_restart(old, new) == ["port", "routing.scrape_interval_s"]


async def test_a_reload_applies_engines_limits_and_refuses_a_clash(dns: DnsServer) -> None:
    fleet = Fleet()
    old = Settings(default_engine=False, engines=[{"name": "a", "url": "http://a"},
                                                   {"name": "b", "url": "http://b"}])
    pool = fleet.pool("a", "b")
    await pool.refresh()
    admission = Admission(old.admission, MemoryCounters())
    discovery = Discovery(pool, fleet.metrics)
    reconfigure = Reconfigure(old, pool, discovery, Scheduler(old.routing, fleet.metrics),
                              admission, fleet.metrics)
    new = Settings(default_engine=False, engines=[{"name": "a", "url": "http://a"},
                                                   {"name": "c", "url": "http://c"}],
                   admission={"max_in_flight_per_engine": 3})
    assert await reconfigure.apply(new) == []
    assert [e.name for e in pool.engines] == ["a", "c"]
    assert admission.limit("m", 2) == 6
    dns.records[("vllm.test.", "A")] = ["127.0.0.9"]
    found = Settings(default_engine=False, engines=new.engines, discovery=[{
        "name": "d", "dns_name": "vllm.test", "port": 80, "nameservers": [dns.address]}])
    await reconfigure.apply(found)
    assert [e.name for e in pool.engines] == ["a", "c", "d-127.0.0.9-80"]
    clash = Settings(default_engine=False, engines=[*new.engines, {
        "name": "d-127.0.0.9-80", "url": "http://x"}], discovery=found.discovery)
    with pytest.raises(Exception, match="already name discovered engines"):
        await reconfigure.apply(clash)
    await reconfigure.apply(new)  # the source gone: its engines leave
    assert [e.name for e in pool.engines] == ["a", "c"]
    await discovery.aclose()


async def test_a_and_srv_records_resolve_to_named_engines(dns: DnsServer) -> None:
    dns.records[("vllm.test.", "A")] = ["10.0.0.2", "10.0.0.1"]
    dns.records[("_http._tcp.vllm.test.", "SRV")] = ["0 0 8001 e1.test.", "0 0 8002 e2.test."]
    dns.records[("e1.test.", "A")] = ["10.0.0.5"]  # sent as glue
    dns.records[("e2.test.", "AAAA")] = ["fd00::7"]
    a = DiscoverySource(name="v", dns_name="vllm.test", port=8000,
                        nameservers=[dns.address], engine={"max_loras": 2})
    assert await resolve(a, resolver_for(a)) == [("10.0.0.1", 8000), ("10.0.0.2", 8000)]
    assert a.engine_config("10.0.0.1", 8000) == EngineConfig(
        name="v-10.0.0.1-8000", url="http://10.0.0.1:8000", max_loras=2)
    srv = DiscoverySource(name="s", dns_name="_http._tcp.vllm.test", record="SRV",
                          nameservers=[dns.address])
    assert await resolve(srv, resolver_for(srv)) == [("10.0.0.5", 8001), ("fd00::7", 8002)]
    assert srv.engine_config("fd00::7", 8002).url == "http://[fd00::7]:8002"
    capped = a.model_copy(update={"max_engines": 1})
    assert await resolve(capped, resolver_for(capped)) == [("10.0.0.1", 8000)]


async def test_a_failed_resolution_keeps_the_engines_found_last(dns: DnsServer) -> None:
    fleet = Fleet()
    pool = fleet.pool()
    discovery = Discovery(pool, fleet.metrics)
    dns.records[("vllm.test.", "A")] = ["127.0.0.1", "127.0.0.2"]
    source = DiscoverySource(name="v", dns_name="vllm.test", port=80, interval_s=60,
                             timeout_s=0.3, nameservers=[dns.address])
    await discovery.reconfigure([source])
    names = ["v-127.0.0.1-80", "v-127.0.0.2-80"]
    assert [e.name for e in pool.engines] == names
    with pytest.raises(ResolveFailed, match="NXDOMAIN"):
        await resolve(source.model_copy(update={"dns_name": "gone.test"}),
                      resolver_for(source))
    dns.silent = True
    await discovery.resolve_once(discovery._sources["v"])
    dns.silent = False
    del dns.records[("vllm.test.", "A")]
    dns.records[("vllm.test.", "AAAA")] = ["::1"]  # the name exists, but has no A: kept
    await discovery.resolve_once(discovery._sources["v"])
    assert [e.name for e in pool.engines] == names
    errors = fleet.metrics.discovery_resolutions.labels("v", "error")._value.get()
    assert errors == 2
    dns.records[("vllm.test.", "A")] = ["127.0.0.2", "127.0.0.3"]
    await discovery.resolve_once(discovery._sources["v"])
    assert [e.name for e in pool.engines] == ["v-127.0.0.2-80", "v-127.0.0.3-80"]
    await discovery.aclose()


def _error() -> SluiceError:
    return EngineUnavailable("gone")
