"""Judging an engine's stream event by event, and keeping what a continuation needs.

Every event is parsed (orjson; measured to cost nothing visible on the relay path), so a
broken engine cannot pass garbage on: an event that is not a JSON object, an
``{"error": ...}`` event, an invalid ``usage`` or an endless event is an
:class:`EngineError`, left in ``fault`` once the good events before it are handed out —
the stream session then continues the answer elsewhere or ends it with an error event. The
transcript (text streamed so far, its token count, whether it finished) is kept
incrementally, so continuing a broken stream never re-reads what was sent.

After a continuation the new engine's events are made to look like the first engine's:
the same chunk ``id``, no second ``delta.role`` chunk, usage counted as one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.context import Usage
from gateway.core.errors import EngineError, SluiceError
from gateway.pipeline.sse import SSEDecoder

log = logging.getLogger("sluice.relay")

DONE = b"[DONE]"


@dataclass(slots=True)
class Transcript:
    """What the client has received so far."""

    parts: list[str] = field(default_factory=list)
    """The text of choice 0, in the pieces it came in."""
    tokens: int = 0
    """Events that carried output text: one token each as vLLM streams (an estimate when
    one event carries several)."""
    other_tokens: int = 0
    """Events that carried other output (tool calls, reasoning), counted the same way."""
    finished: bool = False
    """A choice already reported its finish_reason."""
    stream_id: str | None = None
    obstacle: str | None = None
    """Why this stream cannot be continued, if it cannot."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def head(self, chars: int) -> str:
        """The first ``chars`` characters of the text (joining no more than that)."""
        kept: list[str] = []
        size = 0
        for part in self.parts:
            if size >= chars:
                break
            kept.append(part)
            size += len(part)
        return "".join(kept)[:chars]


class Relay:
    """One streamed answer's events, from however many engines it took."""

    __slots__ = ("_chat", "_continued", "_decoder", "done", "fault", "forward_usage",
                 "transcript", "usage", "usage_event", "usage_shift")

    def __init__(self, *, chat: bool, forward_usage: bool,
                 max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._chat = chat
        self._decoder = SSEDecoder(max_event_bytes)
        self.fault: EngineError | None = None
        """Why this engine's stream cannot go on; set by :meth:`feed`."""
        self.forward_usage = forward_usage
        self.transcript = Transcript()
        self.usage: Usage | None = None
        self.usage_event: bytes | None = None
        """The last usage-only event (as the client gets it), forwarded or not."""
        self.done = False
        self._continued = False
        self.usage_shift = 0
        """Tokens moved from prompt to completion in reported usage: a continuing
        engine counts the text streamed before the break as prompt."""

    def continue_from_here(self) -> None:
        """The next bytes come from an engine continuing this transcript."""
        self._continued = True
        self.usage_shift = self.transcript.tokens
        self.done = False
        self.fault = None
        self._decoder.reset()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of ``data`` to forward, in order. On a bad event, those before it
        and ``fault`` set; nothing more is accepted from this engine."""
        if self.fault is not None:
            return []
        out: list[bytes] = []
        try:
            for payload in self._decoder.feed(data):
                if self.done:
                    break
                if payload == DONE:
                    self.done = True
                    continue
                kept = self._judge(load_event(payload), payload)
                if kept is not None:
                    if b"\n" in kept:  # an event of several data lines: JSON whitespace
                        kept = kept.replace(b"\n", b" ")  # (it was valid), sent as one line
                    out.append(kept)
        except EngineError as exc:  # kept without its traceback: it holds this relay
            self.fault = exc.with_traceback(None)
        if self._decoder.overflowed and self.fault is None:
            self.fault = EngineError(
                f"engine sent an event over {self._decoder.max_event_bytes} bytes")
        return out

    def _judge(self, obj: dict[str, Any], payload: bytes) -> bytes | None:
        if "error" in obj:
            log.warning("engine reported an error mid-stream: %.300r", obj["error"])
            raise EngineError("engine reported an error mid-stream")
        usage = obj.get("usage")
        if usage is not None:
            counted = Usage.from_openai(usage)
            if counted is None:
                raise EngineError("engine sent invalid usage counts")
            self.usage = counted  # cumulative (also with continuous_usage_stats)
        choices = obj.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise EngineError("engine sent an event whose 'choices' is not a list")
            self._record(obj, choices)
        elif usage is not None:
            event = self._as_first_stream(obj, choices, usage) if self._continued else payload
            self.usage_event = event
            return event if self.forward_usage else None
        if self._continued:
            return self._as_first_stream(obj, choices, usage)
        return payload

    def _record(self, obj: dict[str, Any], choices: list[Any]) -> None:
        t = self.transcript
        if t.stream_id is None and isinstance(obj.get("id"), str):
            t.stream_id = obj["id"]
        for choice in choices:
            if not isinstance(choice, dict):
                raise EngineError("engine sent a choice that is not an object")
            first = choice.get("index", 0) == 0
            if not first:
                t.obstacle = "several choices (n > 1)"
            if choice.get("finish_reason"):
                t.finished = True
            if self._chat:
                delta = choice.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                text = delta.get("content")
                if delta.get("tool_calls"):
                    t.obstacle = "tool calls were being streamed"
                if not text and (delta.get("tool_calls") or delta.get("reasoning_content")):
                    t.other_tokens += 1  # output too, though not the answer's text
            else:
                text = choice.get("text")
            if isinstance(text, str) and text:
                if first:
                    t.parts.append(text)
                t.tokens += 1

    def _as_first_stream(self, obj: dict[str, Any], choices: Any,
                         usage: Any) -> bytes | None:
        """A continuing engine's event rewritten as part of the first stream."""
        if self.transcript.stream_id is not None:
            obj["id"] = self.transcript.stream_id
        if self._chat and choices:
            for choice in choices:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    delta.pop("role", None)
            if all(_empty(choice) for choice in choices) and usage is None:
                return None  # the role-only opening chunk of the continuation
        if usage is not None and self.usage_shift and self.usage is not None:
            shift = min(self.usage_shift, self.usage.prompt_tokens)
            obj["usage"] = {**usage, "prompt_tokens": self.usage.prompt_tokens - shift,
                            "completion_tokens": self.usage.completion_tokens + shift,
                            "total_tokens": self.usage.prompt_tokens
                            + self.usage.completion_tokens}
        return orjson.dumps(obj)

    def error_event(self, error: SluiceError) -> bytes:
        """The event that ends a stream that broke: the OpenAI error object."""
        return error.to_json()

    @property
    def tokens(self) -> int:
        return self.transcript.tokens + self.transcript.other_tokens

    @property
    def complete(self) -> bool:
        return self.transcript.finished

    def text(self, chars: int) -> str:
        return self.transcript.head(chars)

    @property
    def reported_usage(self) -> Usage | None:
        """Usage as the client is told it: one request, whatever the failovers."""
        if self.usage is None:
            return None
        shift = min(self.usage_shift, self.usage.prompt_tokens)
        return Usage(self.usage.prompt_tokens - shift, self.usage.completion_tokens + shift)


def load_event(payload: bytes) -> dict[str, Any]:
    """An engine event's data as a JSON object; :class:`EngineError` if it is not one."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EngineError("engine sent an event that is not JSON") from exc
    if not isinstance(obj, dict):
        raise EngineError("engine sent an event that is not a JSON object")
    return obj


def _empty(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return (not (isinstance(delta, dict) and any(delta.values()))
            and choice.get("finish_reason") is None and choice.get("logprobs") is None)
