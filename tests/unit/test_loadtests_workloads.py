"""The multi-turn workload's shared system prompt and session ids (loadtests.workloads)."""

from __future__ import annotations

from loadtests.workloads import MultiTurnWorkload, Request, RequestSource


def conversation_turns(spec: MultiTurnWorkload, seed: int = 0) -> list[Request]:
    """Every request of the workload, answering each turn with a fixed text."""
    source = RequestSource(spec, seed)
    sent: list[Request] = []
    while (request := source.take()) is not None:
        sent.append(request)
        source.complete(request, f"answer {request.session} {request.turn}")
    assert source.exhausted
    return sent


def test_every_request_opens_with_the_same_system_prompt() -> None:
    spec = MultiTurnWorkload(users=3, turns=2, first_len=5, turn_len=3, system_len=12)
    requests = conversation_turns(spec)
    systems = {r.body["messages"][0]["content"] for r in requests}
    assert len(systems) == 1
    assert len(systems.pop().split()) == 12
    assert all(r.body["messages"][0]["role"] == "system" for r in requests)
    assert [m["role"] for m in requests[-1].body["messages"]] == [
        "system", "user", "assistant", "user"]


def test_the_system_prompt_leaves_the_conversations_unchanged() -> None:
    plain = MultiTurnWorkload(users=2, turns=2, first_len=5, turn_len=3)
    with_system = plain.model_copy(update={"system_len": 8})
    without = [r.body["messages"] for r in conversation_turns(plain, 4)]
    after_system = [r.body["messages"][1:] for r in conversation_turns(with_system, 4)]
    assert after_system == without
    assert all(m["role"] != "system" for messages in without for m in messages)


def test_system_prompt_depends_on_the_seed() -> None:
    spec = MultiTurnWorkload(users=1, turns=1, system_len=10)
    first = [conversation_turns(spec, seed)[0].body["messages"][0] for seed in (1, 1, 2)]
    assert first[0] == first[1] != first[2]


def test_completions_put_the_system_prompt_on_the_first_line() -> None:
    spec = MultiTurnWorkload(users=1, turns=2, first_len=4, turn_len=2, system_len=3,
                             endpoint="completions")
    last = conversation_turns(spec)[-1].body["prompt"].split("\n")
    assert len(last) == 4
    assert len(last[0].split()) == 3
    assert last[2] == "answer user-0 0"


def test_session_user_sends_the_conversation_id() -> None:
    spec = MultiTurnWorkload(users=2, turns=2, session_user=True)
    assert {(r.session, r.body["user"]) for r in conversation_turns(spec)} == {
        ("user-0", "user-0"), ("user-1", "user-1")}
    plain = conversation_turns(MultiTurnWorkload(users=1, turns=1))
    assert "user" not in plain[0].body
