"""The relay: SSE decoding, judging each engine event, transcript and continuation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.core.context import Usage
from gateway.pipeline.relay import Relay
from gateway.pipeline.sse import SSEDecoder


def payload(obj: object) -> bytes:
    return orjson.dumps(obj)


def event(obj: object) -> bytes:
    return b"data: " + payload(obj) + b"\n\n"


ROLE_OBJ = {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
TOKEN_OBJ = {"id": "c1", "choices": [{"index": 0, "delta": {"content": " Paris"}}]}
USAGE_OBJ = {"id": "c1", "choices": [],
             "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
ROLE, TOKEN, USAGE = event(ROLE_OBJ), event(TOKEN_OBJ), event(USAGE_OBJ)
DONE = b"data: [DONE]\n\n"


def relay(*, forward_usage: bool = True, chat: bool = True, **kw: Any) -> Relay:
    return Relay(chat=chat, forward_usage=forward_usage, **kw)


def test_forwards_complete_events_unchanged() -> None:
    r = relay()
    assert r.feed(ROLE + TOKEN) == [payload(ROLE_OBJ), payload(TOKEN_OBJ)]
    assert not r.done
    assert r.fault is None


def test_holds_a_partial_event_until_it_completes() -> None:
    r = relay()
    whole = TOKEN + TOKEN
    cut = len(TOKEN) + 5
    assert r.feed(whole[:cut]) == [payload(TOKEN_OBJ)]
    assert r.feed(whole[cut:]) == [payload(TOKEN_OBJ)]


def test_done_ends_the_stream_and_is_left_to_the_framing() -> None:
    r = relay()
    assert r.feed(TOKEN + DONE + TOKEN) == [payload(TOKEN_OBJ)]
    assert r.done


def test_usage_chunk_is_kept_when_the_client_asked_for_it() -> None:
    r = relay(forward_usage=True)
    assert r.feed(TOKEN + USAGE + DONE) == [payload(TOKEN_OBJ), payload(USAGE_OBJ)]
    assert r.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert r.done


def test_usage_chunk_is_dropped_but_counted_when_the_client_did_not_ask() -> None:
    r = relay(forward_usage=False)
    assert r.feed(TOKEN + USAGE + DONE) == [payload(TOKEN_OBJ)]
    assert r.usage == Usage(prompt_tokens=7, completion_tokens=3)


@pytest.mark.parametrize("forward_usage", [True, False])
def test_the_usage_chunk_is_kept_apart_forwarded_or_not(forward_usage: bool) -> None:
    r = relay(forward_usage=forward_usage)
    r.feed(TOKEN + USAGE + DONE)
    assert r.usage_event == payload(USAGE_OBJ)  # what the response cache stores


def test_usage_split_across_reads_is_dropped_whole() -> None:
    r = relay(forward_usage=False)
    data = USAGE + DONE
    assert r.feed(data[:20]) == []
    assert r.feed(data[20:]) == []
    assert r.usage is not None
    assert r.usage.completion_tokens == 3
    assert r.done


def test_continuous_usage_keeps_the_last_cumulative_value() -> None:
    r = relay()
    first = {"choices": [{"delta": {"content": "a"}}],
             "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    second = {"choices": [{"delta": {"content": "b"}}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert r.feed(event(first) + event(second)) == [payload(first), payload(second)]
    assert r.usage == Usage(prompt_tokens=5, completion_tokens=2)


def test_text_mentioning_usage_or_error_is_just_text() -> None:
    r = relay(forward_usage=False)
    tricky = {"choices": [{"delta": {"content": '"usage":{ and "error": are words'}}]}
    assert r.feed(event(tricky)) == [payload(tricky)]
    assert r.usage is None
    assert r.fault is None


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1, "completion_tokens": 3},
    {"prompt_tokens": 1.5, "completion_tokens": 3},
    {"prompt_tokens": "7", "completion_tokens": 3},
    {"prompt_tokens": True, "completion_tokens": 3},
    [7, 3],
])
def test_invalid_usage_is_an_engine_fault(usage: object) -> None:
    r = relay()
    assert r.feed(TOKEN + event({"choices": [], "usage": usage})) == [payload(TOKEN_OBJ)]
    assert r.fault is not None
    assert "usage" in r.fault.message


def test_usage_with_whitespace_is_read() -> None:
    r = relay(forward_usage=False)
    raw = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}\n\n'
    assert r.feed(raw) == []
    assert r.usage == Usage(4, 2)


@pytest.mark.parametrize(("bad", "says"), [
    (b"data: {not json\n\n", "not JSON"),
    (b"data: [1, 2]\n\n", "not a JSON object"),
    (event({"error": {"message": "boom", "type": "InternalServerError"}}), "error mid-stream"),
    (event({"choices": "nope"}), "not a list"),
])
def test_a_bad_event_is_a_fault_after_the_good_ones_before_it(bad: bytes, says: str) -> None:
    r = relay()
    assert r.feed(TOKEN + bad + TOKEN) == [payload(TOKEN_OBJ)]
    assert r.fault is not None
    assert says in r.fault.message
    assert r.feed(TOKEN) == []  # nothing more from that engine


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_other_line_endings_are_valid_sse(ending: bytes) -> None:
    r = relay()
    data = (TOKEN + USAGE + DONE).replace(b"\n", ending)
    out: list[bytes] = []
    for i in range(0, len(data), 7):  # a CR and its LF may land in different reads
        out += r.feed(data[i:i + 7])
    assert out == [payload(TOKEN_OBJ), payload(USAGE_OBJ)]
    assert r.done


def test_multi_line_data_comments_and_other_fields() -> None:
    decoder = SSEDecoder()
    raw = b": ping\n\nevent: x\nid: 3\ndata: {\"a\":\ndata:1}\n\nretry: 5\n\ndata\n\n"
    assert decoder.feed(raw) == [b'{"a":\n1}', b""]


def test_an_event_of_several_data_lines_is_forwarded_as_one_line() -> None:
    r = relay()
    two_lines = b'data: {"id": "c1", "choices": [{"index": 0,\ndata: "delta": {}}]}\n\n'
    assert r.feed(two_lines) == [b'{"id": "c1", "choices": [{"index": 0, "delta": {}}]}']


@pytest.mark.parametrize(("raw", "payloads"), [
    (b"data: x\r\n\n", [b"x"]),
    (b"data: a\rdata: b\n\n", [b"a\nb"]),
    (b"data: one\n\n", [b"one"]),
    (b"data: one\n\ndata: two\n\n", [b"one", b"two"]),
])
def test_one_event_per_read_fast_path_keeps_sse_semantics(raw: bytes,
                                                         payloads: list[bytes]) -> None:
    assert SSEDecoder().feed(raw) == payloads


def test_an_endless_event_is_bounded() -> None:
    r = relay(max_event_bytes=1024)
    assert r.feed(TOKEN + b"data: " + b"x" * 600) == [payload(TOKEN_OBJ)]
    assert r.fault is None
    assert r.feed(b"x" * 600) == []
    assert r.fault is not None
    assert "over 1024 bytes" in r.fault.message


def test_a_long_event_in_many_reads_is_scanned_once() -> None:
    decoder = SSEDecoder(max_event_bytes=1 << 20)
    big = b'data: "' + b"y" * 200_000 + b'"\n\n'
    out: list[bytes] = []
    for i in range(0, len(big), 100):
        out += decoder.feed(big[i:i + 100])
    assert out == [big[6:-2]]


def test_transcript_is_kept_incrementally() -> None:
    r = relay()
    r.feed(ROLE + TOKEN + event({"id": "c1", "choices": [
        {"index": 0, "delta": {"content": "!"}, "finish_reason": None}]}))
    t = r.transcript
    assert (t.text, t.tokens, t.finished, t.stream_id, t.obstacle) == (
        " Paris!", 2, False, "c1", None)


def test_the_transcript_text_is_choice_0s_and_its_head_is_bounded() -> None:
    r = relay(chat=False)
    r.feed(event({"id": "c1", "choices": [{"index": 1, "text": " other"},
                                          {"index": 0, "text": " one"}]})
           + event({"id": "c1", "choices": [{"index": 0, "text": " two"}]}))
    t = r.transcript
    assert (t.text, t.tokens, t.obstacle) == (" one two", 3, "several choices (n > 1)")
    assert [t.head(n) for n in (0, 2, 4, 6, 100)] == ["", " o", " one", " one t",
                                                      " one two"]


def test_a_continuation_looks_like_the_first_stream() -> None:
    r = relay(forward_usage=True)
    r.feed(ROLE + TOKEN + TOKEN)
    r.feed(b'data: {"id":"c1","choices":[{"delta":{"content":"cut')  # broken mid-event
    r.continue_from_here()
    role = {"id": "c2", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                           "content": ""}}]}
    more = {"id": "c2", "choices": [{"index": 0, "delta": {"content": " again"},
                                     "finish_reason": "stop"}]}
    usage = {"id": "c2", "choices": [], "usage": {"prompt_tokens": 30,
                                                   "completion_tokens": 7,
                                                   "total_tokens": 37}}
    out = [orjson.loads(p) for p in r.feed(event(role) + event(more) + event(usage) + DONE)]
    assert out == [
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": " again"},
                                  "finish_reason": "stop"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 28, "completion_tokens": 9,
                                              "total_tokens": 37}},
    ]  # no second role chunk; usage counted as one request (2 tokens streamed before)
    assert r.reported_usage == Usage(28, 9)
    assert r.done


def test_tool_call_and_reasoning_events_count_as_delivered_output() -> None:
    r = relay()
    calls = {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "{\"a\""}}]}}]}
    thinking = {"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}
    r.feed(event(thinking) + event(calls) + event(calls) + TOKEN)
    assert r.tokens == 4  # a stream cut here is charged four output events
    assert r.transcript.tokens == 1  # only the text becomes a continuation's prompt
    assert r.text(100) == " Paris"
