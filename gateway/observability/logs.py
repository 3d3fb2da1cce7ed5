"""Log lines on stderr: text for a person at a terminal, JSON for a log collector.

Every line a request causes carries its id: the edge sets :data:`REQUEST_ID` where a
request starts (a WebSocket request, where its task starts), tasks it starts inherit
it, and :class:`RequestIdFilter` copies it onto each record as ``request_id``. Nothing
is formatted unless a line is emitted.

uvicorn's records carry a ``color_message`` (the message with ANSI colours) for its own
formatter: neither format here writes it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

import orjson

LogFormat = Literal["auto", "text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("sluice_request_id", default=None)
"""The id of the request the running task serves (None outside of one)."""

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message", "asctime", "taskName"}
_DROPPED = frozenset({"color_message"})
"""Record attributes neither format writes (uvicorn's ANSI-coloured message)."""


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: ``extra`` and the request id."""
    return {k: v for k, v in vars(record).items()
            if k not in _STANDARD and k not in _DROPPED}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (from :data:`REQUEST_ID`) to a record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in vars(record):
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``12:00:01.234 INFO  sluice.access [<request id>] request key=value ...``: local
    time, level, logger, the request's id, the message, then the other fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        request_id = fields.pop("request_id", None)
        parts = [time.strftime("%H:%M:%S", time.localtime(record.created))
                 + f".{int(record.msecs):03d}", f"{record.levelname:<7}", record.name]
        if request_id is not None:
            parts.append(f"[{request_id}]")
        parts.append(record.getMessage())
        parts += [f"{k}={v}" for k, v in fields.items() if v is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter_for(log_format: LogFormat, *, terminal: bool) -> logging.Formatter:
    """``auto``: text on a terminal, JSON otherwise."""
    if log_format == "text" or (log_format == "auto" and terminal):
        return TextFormatter()
    return JSONFormatter()


def configure_logging(level: str, log_format: LogFormat = "auto") -> None:
    """Send every log record to stderr in ``log_format`` (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format, terminal=sys.stderr.isatty()))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
