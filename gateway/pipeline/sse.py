"""Incremental Server-Sent Events decoding of an engine's byte stream.

vLLM frames every event as ``data: {...}\\n\\n``; that case costs one byte search per
read and a slice per event. Anything else SSE allows is understood too: ``\\r\\n`` and
``\\r`` line endings, several ``data:`` lines in one event, comments and other fields.
The buffer is scanned once (never re-scanned from its start as more bytes arrive) and
bounded: past ``max_event_bytes`` of one unfinished event the decoder drops it and says
so in ``overflowed`` (the caller treats that as an engine fault).
"""

from __future__ import annotations

_SEP = b"\n\n"


class SSEDecoder:
    """Feed it reads; get back the data payload of every event they completed."""

    __slots__ = ("_buf", "_scan", "_skip_lf", "max_event_bytes", "overflowed")

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = b""
        self._scan = 0
        self._skip_lf = False
        self.overflowed = False

    def reset(self) -> None:
        """Forget a partial event (its stream broke; the next bytes are a new stream)."""
        self._buf, self._scan, self._skip_lf, self.overflowed = b"", 0, False, False

    def feed(self, data: bytes) -> list[bytes]:
        if (not self._buf and not self._skip_lf and data.startswith(b"data: ")
                and data.find(b"\n") == len(data) - 2 and data.endswith(b"\n\n")
                and b"\r" not in data):
            return [data[6:-2]]  # one whole vLLM event per read: the common case
        if self._skip_lf or b"\r" in data:
            data, self._skip_lf = normalize_line_endings(data, self._skip_lf)
        buf = self._buf + data if self._buf else data
        end = buf.find(_SEP, self._scan)
        if end < 0:
            self._keep(buf)
            return []
        payloads: list[bytes] = []
        start = 0
        while end >= 0:
            block = buf[start:end]
            if block.startswith(b"data: ") and b"\n" not in block:
                payloads.append(block[6:])  # the one-line event every vLLM sends
            else:
                payload = _parse_block(block)
                if payload is not None:
                    payloads.append(payload)
            start = end + 2
            end = buf.find(_SEP, start)
        self._keep(buf[start:])
        return payloads

    def _keep(self, rest: bytes) -> None:
        if len(rest) > self.max_event_bytes:
            self.overflowed = True
            rest = b""
        self._buf = rest
        self._scan = max(0, len(rest) - 1)  # a separator may straddle two reads



def normalize_line_endings(data: bytes, skip_lf: bool) -> tuple[bytes, bool]:
    """``data`` with ``\r\n`` and lone ``\r`` line endings as ``\n``, and whether a
    ``\n`` opening the next read is to be skipped. A read ending in ``\r`` ends its line
    now; a ``\n`` opening the next read (``skip_lf``) then belongs to that ``\r``."""
    if skip_lf and data.startswith(b"\n"):
        data = data[1:]
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), data.endswith(b"\r")


def _parse_block(block: bytes) -> bytes | None:
    """The data of one event block (lines without their endings), None if it has none."""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            data.append(b"")
    return b"\n".join(data) if data else None
