"""OpenAI request models: what Sluice validates before a request reaches an engine.

Only the fields the gateway acts on are typed (the model, ``stream`` and its options,
the output budget, the prompt text); every other field (sampling parameters, tools,
logprobs, vLLM's extras, ...) is kept as sent and left to the engine, which answers its
own 400 for what it refuses. What vLLM accepts passes here too: ``null`` for optional
fields, integral floats such as ``3.0`` for integers, any string as a message role, no
``model`` (the director fills in the one model served). A field that fails is a 400
naming it in ``param``, as OpenAI and vLLM answer.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from gateway.core.errors import InvalidField, InvalidRequest, NestingTooDeep, UnsupportedMediaType


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


_INT64 = 2**63
"""Integers the gateway acts on are 64-bit, as vLLM's: a JSON integer beyond them arrives
as a float (the JSON reader's) and stays one, so validation refuses it (400)."""


def _integral(value: object) -> object:
    """``3.0`` as ``3`` (vLLM's lax validation takes integral floats); others unchanged."""
    if type(value) is float and value.is_integer() and -_INT64 <= value < _INT64:
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]
"""A JSON integer, or a float with no fractional part."""


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class RequestBody(_Open):
    """What the gateway reads of every request it routes by model: the model, and
    whether the answer is streamed (the passthrough endpoints' whole validation)."""

    model: str | None = None
    """None (or empty): the one model served, when there is exactly one."""
    stream: bool | None = None

    @property
    def wants_usage(self) -> bool:
        return False

    @property
    def output_budget(self) -> int | None:
        return None


class GenerationRequest(RequestBody):
    stream_options: StreamOptions | None = None
    max_tokens: Integer | None = Field(default=None, ge=1)

    @property
    def wants_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def output_budget(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Integer | None = Field(default=None, ge=1)

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


M = TypeVar("M", bound=BaseModel)


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
    """Validate ``body`` into ``model``; the first problem becomes a 400 naming the field
    (``param``) and saying what is wrong with it (``code``)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param(body, first)
        raise InvalidField(f"{param}: {first['msg']}" if param else first["msg"],
                           param=param, code=_code(first["type"])) from exc


def choice_text(answer: object, *, chat: bool) -> str:
    """The text of choice 0 of a non-streamed chat or completions answer (a chat
    message's ``content``, a completion's ``text``); empty when it has none."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return ""
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            if chat:
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else None
            else:
                text = choice.get("text")
            return text if isinstance(text, str) else ""
    return ""


def _param(body: dict[str, Any], error: ErrorDetails) -> str | None:
    """The path of the failing field as it is in the body (``messages.0.role``): pydantic's
    location without the union member it tried last (``content.str``)."""
    parts: list[str] = []
    node: Any = body
    loc = error["loc"]
    for index, part in enumerate(loc):
        inside = (part in node if isinstance(node, dict) else
                  isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if inside:
            node = node[part]
        elif not (index == len(loc) - 1 and error["type"] == "missing"):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def _code(error_type: str) -> str:
    """OpenAI's codes for a bad field: missing, of the wrong type, or a bad value."""
    if error_type == "missing":
        return "missing_required_parameter"
    if error_type.endswith(("_type", "_parsing")) or error_type == "int_from_float":
        return "invalid_type"
    return "invalid_value"


class KeyRequest(BaseModel):
    """``POST /admin/keys``: a key's name, the models it may use (none listed: all),
    and its limits per minute (left out: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default_factory=list, max_length=1000)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class PolicyRequest(BaseModel):
    """``PUT /admin/versions/{alias}``: the alias's new split (relative weights per
    version) and shadow fractions; it replaces the current policy whole."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(min_length=1, max_length=64)
    shadow: dict[str, float] = Field(default_factory=dict, max_length=64)


class RolloutRequest(BaseModel):
    """``POST /admin/versions/{alias}/rollout``: the version to move to, the steps (its
    share in percent, rising, ending at 100), the hold of each step in seconds, and the
    version it replaces (default: the one with the most traffic besides it)."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64)
    steps: list[float] = Field(min_length=1, max_length=20)
    hold_s: float = Field(gt=0, le=86400)
    base: str | None = Field(default=None, max_length=64)
