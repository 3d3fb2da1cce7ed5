import orjson
import pytest

from gateway.core.errors import InvalidField, InvalidRequest, NestingTooDeep, UnsupportedMediaType
from gateway.core.protocol import (
    MAX_JSON_DEPTH,
    ChatCompletionRequest,
    CompletionRequest,
    check_media_type,
    choice_text,
    parse_body,
    validate,
)


def test_parse_body_accepts_a_json_object() -> None:
    assert parse_body(b'{"model": "m"}') == {"model": "m"}


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"text"'])
def test_parse_body_rejects_anything_else_with_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_body(raw)
    assert info.value.status_code == 400


def test_chat_request_keeps_unknown_fields_for_the_engine() -> None:
    request = validate(ChatCompletionRequest, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "top_k": 5, "logprobs": True})
    assert request.model_extra == {"top_k": 5, "logprobs": True}
    assert not request.stream
    assert not request.wants_usage


def test_output_budget_prefers_max_completion_tokens() -> None:
    request = validate(ChatCompletionRequest, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10, "max_completion_tokens": 20})
    assert request.output_budget == 20


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "m", "messages": []}, "messages", "invalid_value"),
    ({"model": "m"}, "messages", "missing_required_parameter"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model", "invalid_type"),
    ({"model": "m", "messages": "hello"}, "messages", "invalid_type"),
    ({"model": "m", "messages": [{"role": 1, "content": "x"}]}, "messages.0.role",
     "invalid_type"),
    ({"model": "m", "messages": [{"content": "x"}]}, "messages.0.role",
     "missing_required_parameter"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "invalid_type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
     "max_tokens", "invalid_value"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5},
     "max_tokens", "invalid_type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
     "max_tokens", "invalid_type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
     "stream", "invalid_type"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
     "invalid_type"),
])
def test_invalid_chat_fields_are_400_naming_the_field(body: dict[str, object], param: str,
                                                      code: str) -> None:
    with pytest.raises(InvalidField) as info:
        validate(ChatCompletionRequest, body)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.code == code
    assert param in info.value.message


def test_what_vllm_accepts_is_accepted() -> None:
    request = validate(ChatCompletionRequest, {
        "messages": [{"role": "ipython", "content": "x"}, {"role": "robot"}],
        "n": None, "stream": None, "stream_options": None, "max_tokens": 3.0, "seed": 1.0,
        "max_completion_tokens": None, "temperature": "hot"})
    assert request.model is None
    assert not request.stream
    assert request.max_tokens == 3
    assert type(request.max_tokens) is int
    assert request.output_budget == 3
    # Fields the gateway does not act on are the engine's to judge, as sent.
    assert request.model_extra == {"n": None, "seed": 1.0, "temperature": "hot"}


def test_completion_request_needs_a_prompt() -> None:
    with pytest.raises(InvalidField) as info:
        validate(CompletionRequest, {"model": "m"})
    assert info.value.param == "prompt"
    assert validate(CompletionRequest, {"model": "m", "prompt": [1, 2, 3]}).prompt == [1, 2, 3]


def test_integer_temperature_and_stream_options_are_accepted() -> None:
    request = validate(ChatCompletionRequest, {
        "model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})
    assert request.temperature == 0.0
    assert request.wants_usage


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON;CHARSET=\"UTF-8\"",
    "application/vnd.openai+json", "application/json; charset=utf8; x=y"])
def test_json_media_types_pass(content_type: str) -> None:
    check_media_type(content_type)


@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
    "application/jsonx", "text/json", "application/json; charset=utf-16", "json"])
def test_other_media_types_are_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        check_media_type(content_type)
    assert info.value.status_code == 415
    assert info.value.code == "unsupported_media_type"


def _deep(field: str, depth: int) -> bytes:
    return b'{"model": "m", "' + field.encode() + b'": ' + b"[" * depth + b"]" * depth + b"}"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_body(_deep("x", MAX_JSON_DEPTH - 1))["model"] == "m"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 254, 1023])
def test_nesting_past_the_limit_names_the_field(depth: int) -> None:
    with pytest.raises(NestingTooDeep) as info:
        parse_body(_deep("tools", depth))
    assert info.value.status_code == 400
    assert info.value.param == "tools"


def test_many_shallow_containers_are_not_too_deep() -> None:
    raw = orjson.dumps({"model": "m", "prompt": [[1, 2]] * 5000, "x": [{"a": {}}] * 100})
    assert len(parse_body(raw)["prompt"]) == 5000


@pytest.mark.parametrize(("answer", "chat", "text"), [
    ({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}]}, True,
     "Hi"),
    ({"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]}, False, "a"),
    ({"choices": [{"message": {"content": None, "tool_calls": [{}]}}]}, True, ""),
    ({"choices": [{"text": "not a chat answer"}]}, True, ""),
    ({"choices": []}, False, ""),
    ({"error": {"message": "no"}}, True, ""),
    (["not", "an", "object"], False, ""),
])
def test_choice_text_is_choice_0s_text_or_empty(answer: object, chat: bool, text: str) -> None:
    assert choice_text(answer, chat=chat) == text
