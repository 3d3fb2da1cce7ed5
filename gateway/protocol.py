"""OpenAI request models: what Sluice validates before a request reaches an engine.

Only the fields the gateway acts on are typed; every other field (tools, logprobs,
vLLM's extra sampling parameters, ...) is kept as sent and forwarded unchanged.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidField, InvalidRequest, NestingTooDeep, UnsupportedMediaType


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class GenerationRequest(_Open):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = None
    user: str | None = None

    @property
    def wants_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def output_budget(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


M = TypeVar("M", bound=GenerationRequest)


MAX_JSON_DEPTH = 64
"""Deepest nesting of a request body (the body object itself is level 1). Far beyond
what requests use (tool schemas included), and well under what the gateway can
re-serialize for the engine (orjson stops at 254 levels; its parser at 1024)."""


_PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8"})


def check_media_type(content_type: str | None) -> None:
    """A request body must be declared JSON: ``application/json`` or an
    ``application/*+json`` type, with no charset but UTF-8. Anything else (notably the
    types a web page may POST cross-origin without a preflight) is a 415."""
    if content_type in _PLAIN_JSON:
        return
    media, _, params = (content_type or "").partition(";")
    kind, _, subtype = media.strip().lower().partition("/")
    charset = next((value.strip().strip('"').lower()
                    for name, _, value in (p.partition("=") for p in params.split(";"))
                    if name.strip().lower() == "charset"), "utf-8")
    if kind == "application" and (subtype == "json" or subtype.endswith("+json")) \
            and charset in ("utf-8", "utf8"):
        return
    what = f"Content-Type {content_type[:100]!r} is not supported" if content_type \
        else "the request has no Content-Type"
    raise UnsupportedMediaType(f"{what}; send the body as application/json")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body; anything else is a 400, and so is a field nested
    deeper than :data:`MAX_JSON_DEPTH` (``param`` names it)."""
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    # Fewer brackets than the limit cannot nest past it: most bodies skip the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        for name, value in body.items():
            if _nests_deeper(value, MAX_JSON_DEPTH - 1):
                raise NestingTooDeep(
                    f"'{name[:100]}' is nested more than {MAX_JSON_DEPTH} levels deep",
                    param=name[:100])
    return body


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether ``value`` has containers nested more than ``limit`` levels (iterative:
    no recursion however deep the input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def validate(model: type[M], body: dict[str, Any]) -> M:
    """Validate ``body`` into ``model``; the first problem becomes a 422 naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidField(f"{param}: {first['msg']}" if param else first["msg"],
                           param=param) from exc
