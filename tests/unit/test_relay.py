import orjson

from gateway.services.relay import SSERelay, Usage


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = event({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
TOKEN = event({"id": "c1", "choices": [{"index": 0, "delta": {"content": " Paris"}}]})
USAGE = event({"id": "c1", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
DONE = b"data: [DONE]\n\n"


def test_forwards_complete_events_unchanged() -> None:
    relay = SSERelay(forward_usage=True)
    assert relay.feed(ROLE + TOKEN) == ROLE + TOKEN
    assert not relay.done


def test_holds_a_partial_event_until_it_completes() -> None:
    relay = SSERelay(forward_usage=True)
    whole = TOKEN + TOKEN
    cut = len(TOKEN) + 5
    assert relay.feed(whole[:cut]) == TOKEN
    assert relay.feed(whole[cut:]) == TOKEN


def test_usage_chunk_is_kept_when_the_client_asked_for_it() -> None:
    relay = SSERelay(forward_usage=True)
    assert relay.feed(TOKEN + USAGE + DONE) == TOKEN + USAGE + DONE
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert relay.done


def test_usage_chunk_is_dropped_but_counted_when_the_client_did_not_ask() -> None:
    relay = SSERelay(forward_usage=False)
    assert relay.feed(TOKEN + USAGE + DONE) == TOKEN + DONE
    assert relay.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert relay.done


def test_usage_split_across_reads_is_dropped_whole() -> None:
    relay = SSERelay(forward_usage=False)
    data = USAGE + DONE
    assert relay.feed(data[:20]) == b""
    assert relay.feed(data[20:]) == DONE
    assert relay.usage.completion_tokens == 3


def test_continuous_usage_keeps_the_last_cumulative_value() -> None:
    relay = SSERelay(forward_usage=True)
    first = event({"choices": [{"delta": {"content": "a"}}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    second = event({"choices": [{"delta": {"content": "b"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    assert relay.feed(first + second) == first + second
    assert relay.usage == Usage(prompt_tokens=5, completion_tokens=2)


def test_engine_error_event_is_forwarded_and_recorded() -> None:
    relay = SSERelay(forward_usage=False)
    error = event({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})
    assert relay.feed(error + DONE) == error + DONE
    assert relay.error is not None
    assert relay.error["message"] == "boom"


def test_text_mentioning_usage_is_not_mistaken_for_usage() -> None:
    relay = SSERelay(forward_usage=False)
    tricky = event({"choices": [{"delta": {"content": '"usage":{ and "error": are words'}}]})
    assert relay.feed(tricky) == tricky
    assert relay.usage == Usage()
    assert relay.error is None
