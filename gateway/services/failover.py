"""Continuing a broken stream on another engine.

When an engine dies (or stalls) after tokens went to the client, the request is sent
again with the text already streamed as its start: for chat an assistant message with
``continue_final_message: true, add_generation_prompt: false`` (vLLM renders it without
closing the turn, so generation continues mid-sentence), for completions the prompt plus
the text. The output budget shrinks by what was streamed. This module is pure: it reads
the forwarded events and builds the new request body; the caller does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

_ID = re.compile(rb'"id":"([^"]+)"')
_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass
class Transcript:
    """What the client has received so far."""

    text: str = ""
    tokens: int = 0
    """Events that carried output text: one token each as vLLM streams (an estimate when
    one event carries several)."""
    finished: bool = False
    """A choice already reported its finish_reason."""
    stream_id: bytes | None = None
    obstacle: str | None = None
    """Why this stream cannot be continued, if it cannot."""


def first_id(data: bytes) -> bytes | None:
    """The ``id`` of the first event in ``data``."""
    match = _ID.search(data)
    return match.group(1) if match else None


def read_transcript(chunks: Iterable[bytes], *, chat: bool) -> Transcript:
    """Rebuild the streamed output from the forwarded SSE bytes."""
    out = Transcript()
    parts: list[str] = []
    for chunk in chunks:
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            obj = orjson.loads(event[6:])
            if out.stream_id is None and isinstance(obj.get("id"), str):
                out.stream_id = obj["id"].encode()
            for choice in obj.get("choices") or ():
                if choice.get("index", 0) != 0:
                    out.obstacle = "several choices (n > 1)"
                if choice.get("finish_reason"):
                    out.finished = True
                if chat:
                    delta = choice.get("delta") or {}
                    if delta.get("tool_calls"):
                        out.obstacle = "tool calls were being streamed"
                    text = delta.get("content")
                else:
                    text = choice.get("text")
                if isinstance(text, str) and text:
                    parts.append(text)
                    out.tokens += 1
    out.text = "".join(parts)
    return out


def continuation(body: dict[str, Any], transcript: Transcript, *,
                 chat: bool) -> dict[str, Any] | str:
    """The request that continues ``body`` after ``transcript``, or why there is none."""
    if transcript.obstacle:
        return transcript.obstacle
    if transcript.finished:
        return "the answer had already finished"
    if (body.get("n") or 1) != 1:
        return "several choices (n > 1)"
    follow = dict(body)
    for field in _BUDGET_FIELDS:
        budget = body.get(field)
        if isinstance(budget, int):
            if budget - transcript.tokens < 1:
                return "the output budget is spent"
            follow[field] = budget - transcript.tokens
    if isinstance(body.get("min_tokens"), int):
        follow["min_tokens"] = max(0, body["min_tokens"] - transcript.tokens)
    if chat:
        messages = list(body.get("messages") or [])
        last = messages[-1] if messages else None
        if (body.get("continue_final_message") and isinstance(last, dict)
                and last.get("role") == "assistant" and isinstance(last.get("content"), str)):
            messages[-1] = {**last, "content": last["content"] + transcript.text}
        else:
            messages.append({"role": "assistant", "content": transcript.text})
        follow.update(messages=messages, continue_final_message=True,
                      add_generation_prompt=False)
        return follow
    if body.get("echo"):
        return "echo is set"
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        follow["prompt"] = prompt + transcript.text
    elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        follow["prompt"] = [prompt[0] + transcript.text]
    else:
        return "the prompt is not text"
    return follow
