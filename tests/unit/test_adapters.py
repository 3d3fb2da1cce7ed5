"""LoRA adapter rules: what may be registered, which adapter makes room, how an engine's
adapter state is read from its metrics, and how engines are filtered and scored."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters import AdapterSpec, Resident, under_roots, victim
from gateway.config.settings import Settings
from gateway.scheduling.filters.serves_model import ServesModel
from gateway.scheduling.framework.interfaces import Cycle
from gateway.scheduling.scorers.lora_affinity import LoraAffinity
from gateway.upstream.load import parse_load
from tests.unit.scheduling.fakes import Engine, request

SPEC = AdapterSpec(name="sql-lora", base="m", path="/models/adapters/sql", rank=8)


@pytest.mark.parametrize("path", ["relative/x", "/a/../b", "/a//b", "/a/./b", "/", "/a\x00"])
def test_an_adapter_path_must_be_absolute_and_normalized(path: str) -> None:
    with pytest.raises(ValidationError):
        AdapterSpec(name="a", base="m", path=path)


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 129])
def test_an_adapter_name_is_a_plain_token(name: str) -> None:
    with pytest.raises(ValidationError):
        AdapterSpec(name=name, base="m", path="/a")


def test_paths_must_lie_under_the_roots_and_names_be_unique() -> None:
    assert under_roots("/models/adapters/sql", ["/models/adapters/"])
    assert not under_roots("/models/adapters-evil/sql", ["/models/adapters"])
    assert under_roots("/anywhere", [])
    with pytest.raises(ValidationError, match=r"not under lora\.roots"):
        Settings(adapters=[SPEC], lora={"roots": ["/elsewhere"]})
    with pytest.raises(ValidationError, match="registered twice"):
        Settings(adapters=[SPEC, SPEC])


def test_the_victim_is_the_least_recently_used_idle_unpinned_adapter() -> None:
    assert victim([Resident("a", 1.0, busy=False), Resident("b", 0.5, busy=False)]) == "b"
    assert victim([Resident("a", 1.0, busy=False), Resident("b", 0.5, busy=True)]) == "a"
    assert victim([Resident("a", 0.1, busy=False, pinned=True),
                   Resident("b", 0.5, busy=False)]) == "b"
    assert victim([Resident("a", 1.0, busy=True), Resident("b", 0.5, busy=True)]) is None
    assert victim([]) is None


def test_the_lora_state_is_the_newest_lora_requests_info_sample() -> None:
    page = (b'vllm:num_requests_running{model_name="m"} 2.0\n'
            b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",'
            b'waiting_lora_adapters=""} 1.8e9\n'
            b'vllm:lora_requests_info{waiting_lora_adapters="c",max_lora="2",'
            b'running_lora_adapters=""} 1.7e9\n')
    lora = parse_load(page).lora
    assert (lora.max_lora, lora.running, lora.waiting) == (2, {"a", "b"}, frozenset())
    off = parse_load(b'vllm:num_requests_running{model_name="m"} 2.0\n').lora
    assert (off.max_lora, off.enabled) == (None, False)
    declared = parse_load(b"# HELP vllm:lora_requests_info Running stats on lora requests.\n"
                          b"# TYPE vllm:lora_requests_info gauge\n").lora
    assert (declared.max_lora, declared.enabled) == (None, True)  # on, before any step


def test_engines_that_could_load_an_adapter_pass_the_filter() -> None:
    ctx = request(model="sql-lora")
    ctx.lora = SPEC
    engines = [Engine("holds", cards={"m": {}, "sql-lora": {"parent": "m"}}),
               Engine("can", lora_bound=2),
               Engine("no-lora"),
               Engine("low-rank", lora_bound=2, max_lora_rank=4),
               Engine("other-base", cards={"x": {}}, lora_bound=2)]
    kept = [e.name for e in ServesModel().filter(ctx, engines)]
    assert kept == ["holds", "can"]


def test_lora_affinity_prefers_holders_then_free_slots_then_idle_ones() -> None:
    ctx = request(model="sql-lora")
    ctx.lora = SPEC
    holder = Engine("holds", lora_bound=1, cards={"m": {}, "sql-lora": {"parent": "m"}})
    free = Engine("free", lora_bound=2, cards={"m": {}, "x": {"parent": "m"}})
    idle = Engine("idle", lora_bound=1, cards={"m": {}, "x": {"parent": "m"}})
    busy = Engine("busy", lora_bound=1, cards={"m": {}, "x": {"parent": "m"}},
                  lora_busy=frozenset({"x"}))
    cycle = Cycle(ctx, [holder, free, idle, busy], [0, 0, 0, 0], 0)
    assert list(LoraAffinity().score(cycle).values) == [1.0, 0.5, 0.25, 0.0]
    plain = request()
    assert set(LoraAffinity().score(Cycle(plain, [holder, free], [0, 0], 0)).values) == {1.0}


def test_an_engines_adapter_bound_is_configured_reported_or_one_while_unreported() -> None:
    from engines.spec import EngineSpec
    from gateway.config.settings import EngineConfig
    from gateway.upstream.load import EngineLoad, LoraInfo
    from gateway.upstream.pool import EngineState

    assert EngineConfig(name="e", url="http://x", max_loras=3).lora_bound == 3
    assert EngineConfig(name="e", url="http://x").lora_bound is None
    managed = EngineConfig(name="e", managed=EngineSpec(model="/m", served_name="m", max_loras=4))
    assert (managed.lora_bound, managed.lora_rank) == (4, 8)
    off = EngineConfig(name="e", managed=EngineSpec(model="/m", served_name="m", enable_lora=False))
    assert off.lora_bound == 0

    def state(lora: LoraInfo, configured: int | None = None) -> int | None:
        engine = EngineState(client=None, breaker=None,  # type: ignore[arg-type]
                             max_loras=configured)
        engine.scraped = EngineLoad(lora=lora)
        return engine.lora_bound

    assert state(LoraInfo(max_lora=2, enabled=True)) == 2
    assert state(LoraInfo(enabled=True)) == 1  # on, its bound not reported yet
    assert state(LoraInfo()) is None  # off
    assert state(LoraInfo(max_lora=2, enabled=True), configured=5) == 5
