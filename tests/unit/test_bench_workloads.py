"""Load-test inputs without a server: workloads, arrival processes, scenario checks."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from loadtests.arrivals import (
    ConcurrencyArrival,
    ConcurrencyPacer,
    ConstantArrival,
    GammaArrival,
    OpenLoopPacer,
    PoissonArrival,
    RampArrival,
    intervals,
    make_pacer,
    offsets,
    with_level,
)
from loadtests.runner import Scenario, check_loopback, run
from loadtests.workloads import (
    WORDS,
    LoraMixWorkload,
    MultiTurnWorkload,
    RandomWorkload,
    Request,
    RequestSource,
    SharedPrefixWorkload,
    Workload,
)


def take(source: RequestSource, count: int) -> list[Request]:
    requests = []
    for _ in range(count):
        request = source.take()
        assert request is not None
        requests.append(request)
    return requests


def prompt_of(request: Request) -> str:
    content = request.body["messages"][-1]["content"]
    assert isinstance(content, str)
    return content


def test_same_seed_same_bodies_other_seed_other_bodies() -> None:
    spec = RandomWorkload(input_len=(5, 50), output_len=(1, 20), repeat_rate=0.2)
    first = [r.body for r in take(RequestSource(spec, 7), 200)]
    again = [r.body for r in take(RequestSource(spec, 7), 200)]
    other = [r.body for r in take(RequestSource(spec, 8), 200)]
    assert first == again
    assert first != other


def test_global_random_state_does_not_matter() -> None:
    spec = RandomWorkload(input_len=(5, 50))
    random.seed(1)
    first = [r.body for r in take(RequestSource(spec, 3), 20)]
    random.seed(2)
    assert [r.body for r in take(RequestSource(spec, 3), 20)] == first


def test_random_lengths_stay_in_range_and_use_the_word_list() -> None:
    spec = RandomWorkload(input_len=(10, 30), output_len=(4, 9))
    requests = take(RequestSource(spec, 1), 500)
    lengths = [len(prompt_of(r).split()) for r in requests]
    outputs = [r.body["max_tokens"] for r in requests]
    assert min(lengths) == 10
    assert max(lengths) == 30
    assert set(outputs) == set(range(4, 10))
    assert all(r.output_len == r.body["max_tokens"] for r in requests)
    assert set(itertools.chain.from_iterable(prompt_of(r).split() for r in requests)) <= set(
        WORDS
    )
    assert len(WORDS) == len(set(WORDS)) == 200


def test_body_shape_chat_and_completions() -> None:
    chat = take(RequestSource(RandomWorkload(input_len=3, output_len=2), 0), 1)[0]
    assert chat.path == "/v1/chat/completions"
    assert chat.body["model"] == "sim-model"
    assert chat.body["stream"] is True
    assert chat.body["stream_options"] == {"include_usage": True}
    assert chat.body["ignore_eos"] is True
    assert chat.body["temperature"] == 0.0
    assert chat.body["max_tokens"] == 2
    spec = RandomWorkload(endpoint="completions", ignore_eos=False, temperature=0.7, model="m")
    completion = take(RequestSource(spec, 0), 1)[0]
    assert completion.path == "/v1/completions"
    assert isinstance(completion.body["prompt"], str)
    assert "messages" not in completion.body
    assert "ignore_eos" not in completion.body
    assert completion.body["temperature"] == 0.7
    assert completion.model == completion.body["model"] == "m"


def test_invalid_ranges_are_refused() -> None:
    with pytest.raises(ValidationError):
        RandomWorkload(input_len=(30, 10))
    with pytest.raises(ValidationError):
        RandomWorkload(output_len=(0, 10))


def test_shared_prefix_is_exactly_n_by_m_with_shared_prefixes_in_shuffled_order() -> None:
    spec = SharedPrefixWorkload(n_prefixes=4, m_suffixes=5, prefix_len=20, suffix_len=7,
                                output_len=3)
    source = RequestSource(spec, 11)
    requests = take(source, 20)
    assert source.take() is None
    assert source.exhausted
    prompts = [prompt_of(r).split() for r in requests]
    assert all(len(p) == 27 for p in prompts)
    groups = Counter(" ".join(p[:20]) for p in prompts)
    assert sorted(groups.values()) == [5, 5, 5, 5]
    assert len({" ".join(p[20:]) for p in prompts}) == 20
    order = [" ".join(p[:20]) for p in prompts]
    grouped = sorted(order, key=order.index)
    assert order != grouped  # not sent prefix by prefix
    again = [prompt_of(r) for r in take(RequestSource(spec, 11), 20)]
    assert again == [" ".join(p) for p in prompts]


def test_multi_turn_prompts_carry_every_earlier_turn_and_answer() -> None:
    spec = MultiTurnWorkload(users=3, turns=3, first_len=10, turn_len=4, output_len=5)
    source = RequestSource(spec, 2)
    first = take(source, 3)
    assert [(r.session, r.turn) for r in first] == [("user-0", 0), ("user-1", 0), ("user-2", 0)]
    assert source.take() is None  # the next turns wait for these answers
    assert not source.exhausted
    sent: dict[str, list[Request]] = {r.session or "": [r] for r in first}
    pending = list(first)
    while pending:
        request = pending.pop(0)
        source.complete(request, f"answer {request.session} {request.turn}")
        follow = source.take()
        if follow is not None:
            assert follow.session == request.session
            assert follow.turn == (request.turn or 0) + 1
            sent[follow.session or ""].append(follow)
            pending.append(follow)
    assert source.exhausted
    for session, turns in sent.items():
        assert len(turns) == 3
        final = turns[-1].body["messages"]
        assert [m["role"] for m in final] == ["user", "assistant"] * 2 + ["user"]
        assert final[1]["content"] == f"answer {session} 0"
        assert final[3]["content"] == f"answer {session} 1"
        assert [len(m["content"].split()) for m in final[::2]] == [10, 4, 4]
        for earlier, later in itertools.pairwise(turns):
            assert later.body["messages"][: len(earlier.body["messages"])] == (
                earlier.body["messages"]
            )


def test_multi_turn_failed_turn_ends_its_conversation() -> None:
    source = RequestSource(MultiTurnWorkload(users=1, turns=5), 0)
    request = source.take()
    assert request is not None
    source.complete(request, None)
    assert source.take() is None
    assert source.exhausted


def test_multi_turn_completions_prompt_concatenates_turns() -> None:
    spec = MultiTurnWorkload(users=1, turns=2, first_len=3, turn_len=2, endpoint="completions")
    source = RequestSource(spec, 0)
    first = take(source, 1)[0]
    source.complete(first, " an answer")
    second = take(source, 1)[0]
    assert second.body["prompt"].startswith(first.body["prompt"] + "\n an answer\n")


def test_lora_mix_follows_weights_and_keeps_the_prompts() -> None:
    inner = RandomWorkload(input_len=(3, 8), output_len=2)
    mix = LoraMixWorkload(workload=inner, models={"sim-model": 1, "a": 2, "b": 1})
    requests = take(RequestSource(mix, 5), 20_000)
    counts = Counter(r.model for r in requests)
    assert counts["sim-model"] / 20_000 == pytest.approx(0.25, abs=0.015)
    assert counts["a"] / 20_000 == pytest.approx(0.5, abs=0.015)
    assert counts["b"] / 20_000 == pytest.approx(0.25, abs=0.015)
    assert all(r.body["model"] == r.model for r in requests)
    plain = take(RequestSource(inner, 5), 100)
    assert [prompt_of(r) for r in requests[:100]] == [prompt_of(r) for r in plain]


def test_lora_mix_over_multi_turn_keeps_one_model_per_conversation() -> None:
    mix = LoraMixWorkload(workload=MultiTurnWorkload(users=40, turns=2), models={"a": 1, "b": 1})
    source = RequestSource(mix, 0)
    first = {r.session: r for r in take(source, 40)}
    assert set(Counter(r.model for r in first.values())) == {"a", "b"}
    for request in first.values():
        source.complete(request, "x")
    for request in take(source, 40):
        assert request.model == first[request.session].model


def test_lora_mix_from_yaml_shaped_dict() -> None:
    spec = TypeAdapter(Workload).validate_python(
        {"kind": "lora_mix", "models": {"a": 1}, "workload": {"kind": "random", "input_len": 4}}
    )
    assert isinstance(spec, LoraMixWorkload)
    assert isinstance(spec.workload, RandomWorkload)
    assert spec.workload.input_len == (4, 4)
    with pytest.raises(ValidationError):
        LoraMixWorkload(workload=RandomWorkload(repeat_rate=0.1), models={"a": 1},
                        repeat_rate=0.1)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_repeat_rate_repeats_identical_bodies(rate: float) -> None:
    spec = RandomWorkload(input_len=(20, 40), output_len=(1, 50), repeat_rate=rate)
    requests = take(RequestSource(spec, 9), 4000)
    seen: list[dict[str, Any]] = []
    repeats = 0
    for request in requests:
        if request.body in seen[-1024:]:
            repeats += 1
        seen.append(request.body)
    assert repeats / len(requests) == pytest.approx(rate, abs=0.03)
    if rate == 0:
        assert repeats == 0


def test_repeat_rate_on_lora_mix_repeats_the_model_too() -> None:
    mix = LoraMixWorkload(workload=RandomWorkload(input_len=10), models={"a": 1, "b": 1},
                          repeat_rate=0.5)
    requests = take(RequestSource(mix, 1), 400)
    bodies = [r.body for r in requests]
    repeated = [b for i, b in enumerate(bodies) if b in bodies[:i]]
    assert len(repeated) > 150
    fresh_prompts = {b["messages"][0]["content"]: b["model"] for b in bodies}
    assert all(fresh_prompts[b["messages"][0]["content"]] == b["model"] for b in repeated)


def test_multi_turn_repeat_replays_a_conversation() -> None:
    spec = MultiTurnWorkload(users=50, turns=1, repeat_rate=0.4)
    bodies = [r.body for r in take(RequestSource(spec, 4), 50)]
    repeated = sum(1 for i, b in enumerate(bodies) if b in bodies[:i])
    assert 10 <= repeated <= 30


@pytest.mark.parametrize(
    "arrival",
    [PoissonArrival(rate=4.0), GammaArrival(rate=4.0, burstiness=0.5),
     GammaArrival(rate=4.0, burstiness=4.0)],
)
def test_inter_arrival_mean_is_one_over_rate(arrival: PoissonArrival | GammaArrival) -> None:
    gaps = list(itertools.islice(intervals(arrival, random.Random(3)), 40_000))
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.02)
    shape = 1.0 if isinstance(arrival, PoissonArrival) else arrival.burstiness
    # Gamma(shape, 1/(rate*shape)) has variance 1/(rate^2 * shape): burstiness shapes it.
    assert statistics.variance(gaps) == pytest.approx(1 / (16 * shape), rel=0.06)


def test_constant_offsets_are_exact_and_infinite_rate_sends_at_once() -> None:
    times = list(itertools.islice(offsets(ConstantArrival(rate=5), random.Random(0)), 4))
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6])
    burst = itertools.islice(offsets(PoissonArrival(rate=float("inf")), random.Random(0)), 5)
    assert list(burst) == [0.0] * 5


def test_arrival_seeding() -> None:
    spec = PoissonArrival(rate=3)
    first = list(itertools.islice(offsets(spec, random.Random(1)), 50))
    assert first == list(itertools.islice(offsets(spec, random.Random(1)), 50))
    assert first != list(itertools.islice(offsets(spec, random.Random(2)), 50))


@pytest.mark.parametrize(("r0", "r1"), [(1.0, 9.0), (9.0, 1.0), (0.0, 10.0), (5.0, 5.0)])
def test_ramp_rate_moves_linearly(r0: float, r1: float) -> None:
    ramp = RampArrival(start_rate=r0, end_rate=r1, ramp_s=1000.0)
    times = list(itertools.takewhile(lambda t: t < 1000.0, offsets(ramp, random.Random(4))))
    assert len(times) == pytest.approx(500 * (r0 + r1), rel=0.03)
    first_half = sum(1 for t in times if t < 500.0)
    expected = 500 * r0 + (r1 - r0) * 500**2 / 2000  # integral of the rate over [0, 500]
    assert first_half == pytest.approx(expected, rel=0.05)


def test_ramp_without_length_uses_the_request_count() -> None:
    ramp = RampArrival(start_rate=2.0, end_rate=6.0)
    with pytest.raises(ValueError, match="ramp"):
        next(iter(offsets(ramp, random.Random(0))))
    with pytest.raises(ValidationError):
        RampArrival(start_rate=0, end_rate=0)


def test_levels_set_rate_or_concurrency() -> None:
    assert with_level(PoissonArrival(rate=1), 7) == PoissonArrival(rate=7)
    assert with_level(ConcurrencyArrival(concurrency=1), 16) == ConcurrencyArrival(concurrency=16)
    with pytest.raises(ValueError, match="whole"):
        with_level(ConcurrencyArrival(concurrency=1), 2.5)
    with pytest.raises(ValueError, match="ramp"):
        with_level(RampArrival(start_rate=1, end_rate=2), 3)


async def test_open_loop_pacer_keeps_the_schedule() -> None:
    pacer = OpenLoopPacer(offsets(ConstantArrival(rate=50), random.Random(0)))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(6):
        await pacer.acquire()
    assert 0.095 <= loop.time() - began < 0.2  # 5 gaps of 20 ms


async def test_concurrency_pacer_blocks_at_the_limit() -> None:
    pacer = make_pacer(ConcurrencyArrival(concurrency=2), 0)
    assert isinstance(pacer, ConcurrencyPacer)
    await pacer.acquire()
    await pacer.acquire()
    third = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0.01)
    assert not third.done()
    pacer.release()
    await asyncio.wait_for(third, 1)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.8.9.10", "http://localhost:1/v1",
            "http://[::1]:8000", "https://127.0.0.1"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    check_loopback(url)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8000", "http://0.0.0.0:8000", "http://example.com",
            "http://127.0.0.1.nip.io", "http://[::2]:80", "ftp://127.0.0.1", "127.0.0.1:8000",
            "http://localhost.example.com"],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"non-loopback|not an http"):
        check_loopback(url)


async def test_run_refuses_remote_targets_and_scrapes() -> None:
    scenario = Scenario(workload=RandomWorkload(), arrival=PoissonArrival(rate=1), num_requests=1)
    with pytest.raises(ValueError, match="non-loopback"):
        await run("x", "http://192.168.1.1:8000", scenario, progress=False)
    with pytest.raises(ValueError, match="non-loopback"):
        await run("x", "http://127.0.0.1:9", scenario, scrape_urls=["http://8.8.8.8"],
                  progress=False)


def test_scenario_needs_a_bound_and_loads_from_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="num_requests"):
        Scenario(workload=RandomWorkload(), arrival=PoissonArrival(rate=1))
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: mix\n"
        "workload: {kind: lora_mix, models: {a: 3, b: 1},\n"
        "           workload: {kind: shared_prefix, n_prefixes: 2, m_suffixes: 3}}\n"
        "arrival: {kind: gamma, rate: 4, burstiness: 0.5}\n"
        "duration_s: 30\nseed: 3\nlevels: [1, 2, 4]\n"
    )
    scenario = Scenario.from_yaml(path)
    assert isinstance(scenario.workload, LoraMixWorkload)
    assert isinstance(scenario.workload.workload, SharedPrefixWorkload)
    assert scenario.arrival == GammaArrival(rate=4, burstiness=0.5)
    assert scenario.levels == [1, 2, 4]
    assert scenario.num_requests is None
    assert Scenario.model_validate(scenario.model_dump(mode="json")) == scenario
