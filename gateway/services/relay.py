"""The per-token hot path: reading an engine's SSE bytes and deciding what to forward.

Work per upstream read is kept to a few byte searches: events are parsed only when
they carry ``"usage"`` or ``"error"``, which is at most once or twice per stream.
Only complete events are forwarded, so an event the client must not see (the usage
chunk it did not ask for) can be dropped whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_SEP = b"\n\n"
_DONE = b"data: [DONE]\n\n"


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> Usage:
        return cls(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class SSERelay:
    """Frames an engine's byte stream into whole events and accounts for them."""

    __slots__ = ("_pending", "done", "error", "forward_usage", "kept", "usage", "usage_shift")

    def __init__(self, *, forward_usage: bool, keep: bool = False) -> None:
        self.forward_usage = forward_usage
        self.usage = Usage()
        self.done = False
        self.error: dict[str, Any] | None = None
        self.kept: list[bytes] | None = [] if keep else None
        """Everything forwarded so far, when kept (a broken stream is continued from it)."""
        self.usage_shift = 0
        """Tokens moved from prompt to completion in reported usage: a continued stream's
        engine counts the text streamed before the break as prompt."""
        self._pending = b""

    def restart(self) -> None:
        """Drop a partial event of a broken upstream; the next bytes are a new stream."""
        self._pending = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Bytes to send to the client for this read (complete events only)."""
        if self._pending:
            data = self._pending + data
        end = data.rfind(_SEP)
        if end < 0:
            self._pending = data
            return b""
        end += 2
        if end == len(data):
            self._pending = b""
        else:
            data, self._pending = data[:end], data[end:]
        if data.endswith(_DONE):
            self.done = True
        if b'"usage":{' in data or b'"error":' in data:
            data = self._inspect(data)
        if self.kept is not None and data:
            self.kept.append(data)
        return data

    def _inspect(self, data: bytes) -> bytes:
        kept: list[bytes] = []
        for event in data.split(_SEP)[:-1]:
            if event.startswith(b"data: {") and (b'"usage":{' in event or b'"error":' in event):
                obj = orjson.loads(event[6:])
                if isinstance(obj.get("error"), dict):
                    self.error = obj["error"]
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    if self.usage_shift:
                        event = b"data: " + orjson.dumps(self._shift(obj, usage))
                    # Cumulative (also with continuous_usage_stats): the last one counts.
                    self.usage = Usage.from_openai(obj["usage"])
                    if not self.forward_usage and not obj.get("choices"):
                        continue
            kept.append(event)
        return b"".join(e + _SEP for e in kept)

    def _shift(self, obj: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
        shift = min(self.usage_shift, int(usage.get("prompt_tokens") or 0))
        obj["usage"] = {**usage,
                        "prompt_tokens": int(usage.get("prompt_tokens") or 0) - shift,
                        "completion_tokens": int(usage.get("completion_tokens") or 0) + shift}
        return obj
