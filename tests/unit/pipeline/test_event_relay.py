"""The Responses stream relay: events forwarded whole, faults judged, the end found."""

from __future__ import annotations

import orjson
import pytest

from gateway.core.context import Usage
from gateway.core.errors import EngineError
from gateway.pipeline.event_relay import EventRelay


def event(kind: str, seq: int, **fields: object) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


CREATED = event("response.created", 0, response={})
DELTA = event("response.output_text.delta", 1, delta=" hi")
COMPLETED = event("response.completed", 2,
                  response={"usage": {"input_tokens": 4, "output_tokens": 1}})


def test_events_are_forwarded_whole_and_the_terminal_event_ends_the_stream() -> None:
    relay = EventRelay()
    assert relay.feed(CREATED + DELTA) == [CREATED, DELTA]
    assert relay.feed(COMPLETED + event("response.extra", 3)) == [COMPLETED]
    assert relay.done
    assert relay.fault is None
    assert relay.usage == Usage(4, 1)
    assert relay.feed(DELTA) == []


def test_events_cut_anywhere_with_crlf_endings_and_comments_are_read() -> None:
    stream = (b": keep-alive\r\n\r\n" + CREATED + DELTA).replace(b"\n", b"\r\n")
    relay, out = EventRelay(), []
    for i in range(len(stream)):
        out += relay.feed(stream[i:i + 1])
    assert out == [CREATED, DELTA]
    assert relay.fault is None
    assert not relay.done


@pytest.mark.parametrize(("bad", "message"), [
    (b"event: response.output_text.delta\ndata: {oops\n\n", "not JSON"),
    (b"data: [1, 2]\n\n", "not a JSON object"),
    (b'event: error\ndata: {"type": "error", "message": "boom"}\n\n', "error mid-stream"),
    (b'data: {"error": {"message": "boom"}}\n\n', "error mid-stream"),
    (event("response.completed", 2, response={"usage": {"input_tokens": -1}}),
     "invalid usage"),
])
def test_a_bad_event_is_a_fault_after_the_good_ones(bad: bytes, message: str) -> None:
    relay = EventRelay()
    assert relay.feed(CREATED + bad + DELTA) == [CREATED]
    assert isinstance(relay.fault, EngineError)
    assert message in relay.fault.message
    assert relay.feed(DELTA) == []


def test_an_endless_event_is_cut_off_at_max_event_bytes() -> None:
    relay = EventRelay(max_event_bytes=1000)
    assert relay.feed(CREATED + b"data: " + b"x" * 600) == [CREATED]
    assert relay.fault is None
    assert relay.feed(b"x" * 600) == []
    assert relay.fault is not None
    assert "over 1000 bytes" in relay.fault.message


def test_the_error_event_follows_the_last_sequence_number() -> None:
    relay = EventRelay()
    relay.feed(CREATED + DELTA)
    raw = relay.error_event(EngineError("engine stream broke"))
    kind, data, *_ = raw.split(b"\n")
    body = orjson.loads(data.removeprefix(b"data: "))
    assert kind == b"event: error"
    assert raw.endswith(b"\n\n")
    assert (body["type"], body["sequence_number"], body["code"]) == ("error", 2, "engine_error")
    assert body["error"]["message"] == "engine stream broke"
