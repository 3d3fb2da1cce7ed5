"""The /v1/ws message protocol, the handshake helpers and the realtime relay's pure parts."""

from __future__ import annotations

import orjson
import pytest

from gateway.core.endpoints import CHAT, COMPLETIONS
from gateway.core.errors import InvalidField
from gateway.edge.handshake import chosen_subprotocol, origin_refusal, subprotocol_key
from gateway.edge.websocket.messages import (
    Cancel,
    FrameError,
    Start,
    Tagged,
    is_error_event,
    read_frame,
)
from gateway.edge.websocket.realtime_events import model_of, models_named, renamed
from gateway.upstream.websocket import sendable_close_code


def test_a_request_frame_starts_a_stream() -> None:
    frame = '{"id": "r1", "type": "chat.completions", "body": {"model": "m", "stream": false}}'
    assert read_frame(frame) == Start("r1", CHAT, {"model": "m", "stream": True})
    frame = '{"id": "r2", "type": "completions", "body": {"prompt": "x"}}'
    assert read_frame(frame) == Start("r2", COMPLETIONS, {"prompt": "x", "stream": True})
    assert read_frame('{"id": "r1", "type": "cancel"}') == Cancel("r1")
    frame = '{"id": "r3", "type": "completions", "body": {}, "version": "v2"}'
    assert read_frame(frame) == Start("r3", COMPLETIONS, {"stream": True}, "v2")


@pytest.mark.parametrize(("frame", "request_id", "code"), [
    ("", None, "invalid_message"),
    ("{", None, "invalid_message"),
    ('"text"', None, "invalid_message"),
    ('{"type": "cancel"}', None, "invalid_message"),
    ('{"id": "", "type": "cancel"}', None, "invalid_message"),
    ('{"id": "' + "x" * 129 + '", "type": "cancel"}', None, "invalid_message"),
    ('{"id": "a", "type": "nope"}', None, "unknown_type"),
    ('{"id": "a", "type": null}', None, "unknown_type"),
    ('{"id": "a", "type": "completions"}', "a", "invalid_message"),
    ('{"id": "a", "type": "completions", "body": "x"}', "a", "invalid_message"),
    ('{"id": "a", "type": "completions", "body": ' + "[" * 70 + "]" * 70 + "}",
     None, "invalid_message"),
    ('{"id": "a", "type": "completions", "body": {}, "version": 2}', "a", "invalid_message"),
    ('{"id": "a", "type": "completions", "body": {}, "version": ""}', "a", "invalid_message"),
])
def test_frames_that_start_nothing(frame: str, request_id: str | None, code: str) -> None:
    with pytest.raises(FrameError) as caught:
        read_frame(frame)
    assert caught.value.request_id == request_id
    assert caught.value.code == code
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_messages_are_tagged_without_re_encoding_the_chunk() -> None:
    tagged = Tagged('a"b')
    chunk = b'{"choices": [ {"delta": {}} ] }'
    assert tagged.chunk(chunk) == b'{"id":"a\\"b","type":"chunk","data":' + chunk + b"}"
    assert orjson.loads(tagged.chunk(chunk))["data"] == orjson.loads(chunk)
    assert orjson.loads(tagged.done(None)) == {"id": 'a"b', "type": "done"}
    assert orjson.loads(tagged.done({"prompt_tokens": 1})) == {
        "id": 'a"b', "type": "done", "usage": {"prompt_tokens": 1}}
    assert orjson.loads(tagged.done(None, "hit")) == {"id": 'a"b', "type": "done",
                                                      "cache": "hit"}
    assert orjson.loads(tagged.done(None, version="v2", fallback_from="v1")) == {
        "id": 'a"b', "type": "done", "version": "v2", "fallback_from": "v1"}
    assert orjson.loads(tagged.cancelled()) == {"id": 'a"b', "type": "cancelled"}
    error = InvalidField("bad", param="x")
    assert orjson.loads(Tagged(None).error(error)) == {"id": None, "type": "error",
                                                       **error.body()}
    assert is_error_event(error.to_json())
    assert not is_error_event(b'{"id": "x", "error": null}')


def test_subprotocols_carry_a_key_and_only_sluice_is_chosen() -> None:
    scope = {"subprotocols": ["sluice", "bearer.sk-1234"]}
    assert subprotocol_key(scope) == "sk-1234"
    assert chosen_subprotocol(scope) == "sluice"
    assert chosen_subprotocol({"subprotocols": ["bearer.sk-1234"]}) is None
    assert subprotocol_key({"subprotocols": []}) is None


def _scope(origin: str | None, host: str = "127.0.0.1:8000", *,
           server: tuple[str, int] = ("127.0.0.1", 8000),
           scheme: str = "ws") -> dict[str, object]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"headers": headers, "server": server, "scheme": scheme}


def test_foreign_origins_are_refused_only_without_keys() -> None:
    assert origin_refusal(_scope(None), keys_set=False, allowed=[]) is None
    assert origin_refusal(_scope("http://127.0.0.1:8000"), keys_set=False, allowed=[]) is None
    refusal = origin_refusal(_scope("http://evil.example"), keys_set=False, allowed=[])
    assert refusal is not None
    assert refusal.status_code == 403
    assert origin_refusal(_scope("http://evil.example"), keys_set=True, allowed=[]) is None
    assert origin_refusal(_scope("http://a.example"), keys_set=False,
                          allowed=["http://a.example"]) is None
    assert origin_refusal(_scope("http://b.example"), keys_set=False, allowed=["*"]) is None


@pytest.mark.parametrize(("origin", "host", "server", "scheme", "own"), [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", ("127.0.0.1", 8000), "ws", True),
    ("http://localhost:8000", "localhost:8000", ("127.0.0.1", 8000), "ws", True),
    ("http://[::1]:8000", "[::1]:8000", ("::1", 8000), "ws", True),
    ("https://10.0.0.5", "10.0.0.5", ("10.0.0.5", 443), "wss", True),
    # DNS rebinding: the page's name in Origin and Host alike
    ("http://evil.example:8000", "evil.example:8000", ("127.0.0.1", 8000), "ws", False),
    ("https://127.0.0.1:8000", "127.0.0.1:8000", ("127.0.0.1", 8000), "ws", False),
    ("http://10.0.0.5", "10.0.0.5", ("10.0.0.5", 443), "wss", False),
    ("http://127.0.0.1:8001", "127.0.0.1:8000", ("127.0.0.1", 8000), "ws", False),
    ("http://localhost:8000", "localhost:8000", ("10.0.0.5", 8000), "ws", False),
    ("http://10.0.0.6:8000", "10.0.0.6:8000", ("10.0.0.5", 8000), "ws", False),
    ("http://[bad:8000", "x", ("127.0.0.1", 8000), "ws", False),
    ("null", "127.0.0.1:8000", ("127.0.0.1", 8000), "ws", False),
])
def test_the_gateways_own_origin_comes_from_the_connection_not_host(
        origin: str, host: str, server: tuple[str, int], scheme: str, own: bool) -> None:
    refusal = origin_refusal(_scope(origin, host, server=server, scheme=scheme),
                             keys_set=False, allowed=[])
    assert (refusal is None) is own


def test_realtime_model_comes_from_a_session_update() -> None:
    assert model_of({"type": "session.update", "model": "m"}) == "m"
    assert model_of({"type": "session.update", "session": {"model": "m"}}) == "m"
    assert model_of({"type": "session.update", "model": ""}) is None
    assert model_of({"type": "input_audio_buffer.commit", "model": "m"}) is None
    assert model_of(["session.update"]) is None


def test_every_model_a_session_update_names_is_found_escaped_or_not() -> None:
    assert models_named('{"type": "session.update", "model": "a", '
                        '"session": {"model": "b"}}') == ["a", "b"]
    assert models_named('{"type": "session\\u002eupdate", "model": 5}') == [5]
    assert models_named('{"type": "session.update"}') == []
    assert models_named('{"type": "input_audio_buffer.append", "audio": "AAAA"}') is None
    assert models_named('{"type": "session.update", "model": ') is None  # not JSON


def test_a_session_update_naming_an_alias_is_renamed_for_the_engine() -> None:
    def rename(event: object) -> object:
        return orjson.loads(renamed(orjson.dumps(event).decode(), "chat", "sim-b"))

    assert rename({"type": "session.update", "model": "chat"}) == {
        "type": "session.update", "model": "sim-b"}
    assert rename({"type": "session.update", "session": {"model": "chat", "x": 1}}) == {
        "type": "session.update", "session": {"model": "sim-b", "x": 1}}
    untouched = ['{"type": "session.update", "model": "other"}',
                 '{"type": "input_audio_buffer.append", "audio": "session.update chat"}',
                 '{"type": "session.update", "model": "chat"',  # not JSON
                 '{"type": "input_audio_buffer.commit", "model": "chat"}']
    assert [renamed(text, "chat", "sim-b") for text in untouched] == untouched


@pytest.mark.parametrize(("code", "sent"), [
    (1000, 1000), (1001, 1001), (4000, 4000), (1005, 1014), (1006, 1014), (None, 1014),
    (999, 1014), (5000, 1014)])
def test_only_sendable_close_codes_pass_on(code: int | None, sent: int) -> None:
    assert sendable_close_code(code, 1014) == sent
