"""The realtime events the gateway reads or writes on a ``/v1/realtime`` session (see
:mod:`gateway.edge.websocket.realtime`): the models a ``session.update`` names, an alias
renamed to its served model, ``error`` events, and the usage a ``transcription.done``
reports. Every other message passes through unparsed.

A message is parsed when it may be a ``session.update``: it holds that text, or a JSON
``\\u`` escape (which could spell it; base64 audio never has a backslash)."""

from __future__ import annotations

import orjson

from gateway.core.context import RequestContext, Usage


def may_update(text: str) -> bool:
    """Whether ``text`` needs parsing to know if it is a ``session.update``."""
    return "session.update" in text or "\\u" in text


def models_named(text: str) -> list[object] | None:
    """What a ``session.update`` names as its model (vLLM's top-level ``model`` and
    OpenAI's ``session.model``, each when present: any JSON value); None when ``text``
    is not a ``session.update``."""
    if not may_update(text):
        return None
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") != "session.update":
        return None
    session = event.get("session")
    holders = (event, session) if isinstance(session, dict) else (event,)
    return [holder["model"] for holder in holders if "model" in holder]


def model_of(event: object) -> str | None:
    """The model a ``session.update`` event names (vLLM's top-level ``model``, or
    OpenAI's ``session.model``); None when it is not one that does."""
    if not isinstance(event, dict) or event.get("type") != "session.update":
        return None
    session = event.get("session")
    model = event.get("model") or (session.get("model") if isinstance(session, dict) else None)
    return model if isinstance(model, str) and model else None


def renamed(text: str, alias: str, served: str) -> str:
    """``text``, with a ``session.update`` that names ``alias`` (as ``model`` or
    ``session.model``) made to name ``served``; any other message unchanged."""
    if not may_update(text):  # audio appends pass without being parsed
        return text
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if model_of(event) is None:
        return text
    session = event.get("session")
    changed = False
    for holder in (event, session if isinstance(session, dict) else {}):
        if holder.get("model") == alias:
            holder["model"], changed = served, True
    return orjson.dumps(event).decode() if changed else text


def error_event(message: str, code: str | None) -> str:
    """An ``error`` event in vLLM's realtime shape."""
    return orjson.dumps({"type": "error", "error": message, "code": code}).decode()


def count_usage(ctx: RequestContext, text: str) -> None:
    """Add the usage an engine event reports (``transcription.done``) to the session's."""
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    usage = Usage.from_openai(event.get("usage")) if isinstance(event, dict) else None
    if usage is None:
        return
    if ctx.usage is None:
        ctx.usage = usage
    else:
        ctx.usage.prompt_tokens += usage.prompt_tokens
        ctx.usage.completion_tokens += usage.completion_tokens
