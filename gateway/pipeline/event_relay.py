"""Judging a ``/v1/responses`` stream event by event, forwarding each one whole.

vLLM streams the Responses API as named Server-Sent Events (``event: <type>`` then
``data: {...}``) and ends after a terminal event (``response.completed``,
``response.failed`` or ``response.incomplete``), with no ``data: [DONE]``. Each event
is forwarded as the engine framed it, ``event:`` line included; only its line endings
are normalized to ``\\n``. Every event's data is parsed, so a broken engine cannot pass
garbage on: data that is not a JSON object, an error event, invalid usage, or one event
over ``max_event_bytes`` is an :class:`EngineError`, left in ``fault`` once the good
events before it are handed out. There is no continuation on another engine for these
streams: the caller ends them with :meth:`EventRelay.error_event`.
"""

from __future__ import annotations

import logging

import orjson

from gateway.core.context import Usage
from gateway.core.errors import EngineError, SluiceError
from gateway.pipeline.relay import load_event
from gateway.pipeline.sse import normalize_line_endings

log = logging.getLogger("sluice.relay")

TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
"""Event types after which a Responses stream is over."""
_SEP = b"\n\n"


class EventRelay:
    """One streamed Responses answer, from one engine."""

    __slots__ = ("_buf", "_skip_lf", "done", "fault", "max_event_bytes", "sequence",
                 "tokens", "usage")

    usage_event: bytes | None = None
    """Usage comes inside the terminal event: nothing is kept apart."""

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = b""
        self._skip_lf = False
        self.done = False
        """A terminal event was forwarded."""
        self.fault: EngineError | None = None
        self.usage: Usage | None = None
        """Token counts of the terminal event's ``response.usage``."""
        self.sequence = -1
        """The last ``sequence_number`` forwarded."""
        self.tokens = 0
        """Text deltas forwarded (``response.output_text.delta``, a token each as vLLM
        streams): what a stream cut before its terminal event is charged."""

    def feed(self, data: bytes) -> list[bytes]:
        """The whole events of ``data`` to forward (each framed, blank line included).
        On a bad event, those before it and ``fault`` set; nothing more is accepted."""
        if self.fault is not None or self.done:
            return []
        if self._skip_lf or b"\r" in data:
            data, self._skip_lf = normalize_line_endings(data, self._skip_lf)
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        start, end = 0, buf.find(_SEP)
        try:
            while end >= 0 and not self.done:
                block = buf[start:end]
                if self._judge(block):
                    out.append(block + _SEP)
                start = end + 2
                end = buf.find(_SEP, start)
        except EngineError as exc:  # kept without its traceback: it holds this relay
            self.fault = exc.with_traceback(None)
            return out
        rest = b"" if self.done else buf[start:]
        if len(rest) > self.max_event_bytes:
            self.fault = EngineError(
                f"engine sent an event over {self.max_event_bytes} bytes")
            rest = b""
        self._buf = rest
        return out

    @property
    def reported_usage(self) -> Usage | None:
        return self.usage

    @property
    def complete(self) -> bool:
        return self.done

    def text(self, chars: int) -> str:
        return ""  # (only chat and completions texts are compared by shadow mirrors)

    def error_event(self, error: SluiceError) -> bytes:
        """The event that ends a stream that broke: a Responses ``error`` event that also
        carries the OpenAI error object (which the ``openai`` client raises)."""
        body = error.body()["error"]
        event = {"type": "error", "code": body["code"], "message": body["message"],
                 "param": body["param"], "sequence_number": self.sequence + 1,
                 "error": body}
        return b"event: error\ndata: " + orjson.dumps(event) + _SEP

    def _judge(self, block: bytes) -> bool:
        """Whether ``block`` is an event to forward (a comment-only block is not)."""
        kind: bytes | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                kind = value
        if not data:
            return False
        obj = load_event(b"\n".join(data))
        if kind == b"error" or obj.get("type") == "error" or obj.get("error"):
            log.warning("engine reported an error mid-stream: %.300r", obj)
            raise EngineError("engine reported an error mid-stream")
        if type(obj.get("sequence_number")) is int:
            self.sequence = obj["sequence_number"]
        kind_of = obj.get("type")
        if kind_of == "response.output_text.delta":
            self.tokens += 1
        elif kind_of in TERMINAL:
            self.usage = _usage(obj.get("response"))
            self.done = True
        return True


def _usage(response: object) -> Usage | None:
    """A Responses ``usage`` (``input_tokens``, ``output_tokens``) as counts; None when
    there is none; an :class:`EngineError` when its counts are not valid."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if usage is None:
        return None
    counted = responses_usage(usage)
    if counted is None:
        raise EngineError("engine sent invalid usage counts")
    return counted


def responses_usage(usage: object) -> Usage | None:
    """The counts of a Responses ``usage`` object; None when it is not a valid one."""
    if not isinstance(usage, dict):
        return None
    return Usage.from_openai({"prompt_tokens": usage.get("input_tokens", 0),
                              "completion_tokens": usage.get("output_tokens", 0)})
