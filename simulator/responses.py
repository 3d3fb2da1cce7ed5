"""The Responses API (`POST /v1/responses`) over the simulator's chat generation.

A Responses body becomes a chat request (`instructions` a system message, `input` a user
message or a list of messages, `max_output_tokens` the token budget), so it gets the
same prompt counting and the same generated text. Not streamed, the answer is one
`response` object with one output message and `usage`; streamed, it is named events as
vLLM and OpenAI send them: `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, one
`response.output_text.delta` per token, then the `.done` events and
`response.completed` (no `data: [DONE]`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson

from simulator.config import SimConfig
from simulator.protocol import (
    WORDS,
    GenerationRequest,
    SimError,
    completion_text,
    parse_chat,
    word_index,
)


def parse_responses(body: Any, config: SimConfig, loras: Collection[str]) -> GenerationRequest:
    """Validate a `/v1/responses` body (as a chat request)."""
    if not isinstance(body, dict):
        raise SimError(400, "BadRequestError", "request body must be a JSON object")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for item in given:
            if not isinstance(item, dict) or not isinstance(item.get("role"), str):
                raise SimError(400, "BadRequestError", "each input item needs a `role`",
                               "input")
            messages.append({"role": item["role"], "content": item.get("content")})
    else:
        raise SimError(400, "BadRequestError", "`input` must be a string or a list", "input")
    chat = {"model": body.get("model"), "messages": messages,
            "max_tokens": body.get("max_output_tokens"), "stream": body.get("stream", False)}
    return parse_chat(chat, config, loras)


def response_object(request: GenerationRequest, response_id: str, created: int,
                    produced: int | None) -> dict[str, Any]:
    """The `response` object: in progress (`produced` None, no output yet) or completed
    with the first `produced` tokens as its text."""
    obj: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": created,
        "model": request.model, "status": "in_progress", "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "error": None, "incomplete_details": None, "usage": None,
    }
    if produced is not None:
        text = completion_text(request, produced)
        obj |= {"status": "completed", "output": [_message(response_id, text, "completed")],
                "usage": {"input_tokens": request.prompt_tokens,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": produced,
                          "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": request.prompt_tokens + produced}}
    return obj


def response_body(request: GenerationRequest, response_id: str, created: int) -> bytes:
    """The non-streamed answer."""
    return orjson.dumps(response_object(request, response_id, created, request.max_tokens))


def _message(response_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text,
                                        "annotations": [], "logprobs": []}]
    return {"type": "message", "id": "msg_" + response_id.removeprefix("resp_"),
            "role": "assistant", "status": status, "content": content}


class ResponsesEncoder:
    """The named events of one streamed Responses answer."""

    __slots__ = ("_created", "_id", "_item", "_request", "_seq")

    def __init__(self, request: GenerationRequest, response_id: str, created: int) -> None:
        self._request = request
        self._id = response_id
        self._created = created
        self._item = "msg_" + response_id.removeprefix("resp_")
        self._seq = 0

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def opening(self) -> bytes:
        pending = response_object(self._request, self._id, self._created, None)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self._item, "output_index": 0, "content_index": 0}
        return b"".join((
            self._event("response.created", {"response": pending}),
            self._event("response.in_progress", {"response": pending}),
            self._event("response.output_item.added", {
                "output_index": 0, "item": _message(self._id, None, "in_progress")}),
            self._event("response.content_part.added", {**where, "part": part}),
        ))  # fmt: skip

    def tokens(self, parts: list[bytes], start: int, end: int, final: bool) -> None:
        request = self._request
        key, offset = request.text_key, request.text_offset
        for position in range(offset + start, offset + end):
            parts.append(self._event("response.output_text.delta", {
                "item_id": self._item, "output_index": 0, "content_index": 0,
                "delta": WORDS[word_index(key, position)].decode(), "logprobs": []}))
        if final:
            text = completion_text(request, end)
            where = {"item_id": self._item, "output_index": 0, "content_index": 0}
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            parts += (
                self._event("response.output_text.done", {**where, "text": text,
                                                          "logprobs": []}),
                self._event("response.content_part.done", {**where, "part": part}),
                self._event("response.output_item.done", {
                    "output_index": 0, "item": _message(self._id, text, "completed")}),
            )

    def closing(self, completion_tokens: int) -> bytes:
        done = response_object(self._request, self._id, self._created, completion_tokens)
        return self._event("response.completed", {"response": done})
