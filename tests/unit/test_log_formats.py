"""Log formats (text, JSON) and the request id every line of a request carries."""

from __future__ import annotations

import asyncio
import logging
import sys

import orjson
import pytest

from gateway.observability.logs import (
    REQUEST_ID,
    JSONFormatter,
    RequestIdFilter,
    TextFormatter,
    formatter_for,
)


def uvicorn_record() -> logging.LogRecord:
    """A record as uvicorn makes them: with an ANSI-coloured copy of its message."""
    record = logging.LogRecord("uvicorn.error", logging.INFO, "server.py", 1,
                               "Finished server process [%d]", (42,), None)
    record.color_message = "Finished server process [\x1b[36m%d\x1b[0m]"
    return record


def test_json_lines_carry_fields_but_no_ansi_copy_of_the_message() -> None:
    record = uvicorn_record()
    record.model = "m"
    entry = orjson.loads(JSONFormatter().format(record))
    assert entry["msg"] == "Finished server process [42]"
    assert entry["level"] == "info"
    assert entry["logger"] == "uvicorn.error"
    assert entry["model"] == "m"
    assert "color_message" not in entry
    assert "\x1b" not in JSONFormatter().format(record)


def test_text_lines_read_as_a_sentence_with_the_request_id_up_front() -> None:
    record = logging.LogRecord("sluice.access", logging.INFO, "gate.py", 1, "request",
                               None, None)
    record.request_id = "abc123"
    record.status = 200
    record.version = None  # fields with no value are left out
    record.color_message = "\x1b[1mrequest\x1b[0m"
    line = TextFormatter().format(record)
    assert line.split(" ", 1)[1] == "INFO    sluice.access [abc123] request status=200"
    assert "\x1b" not in TextFormatter().format(uvicorn_record())


def test_a_traceback_follows_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "failed", None,
                                   sys.exc_info())
    text, entry = TextFormatter().format(record), orjson.loads(JSONFormatter().format(record))
    assert text.splitlines()[0].endswith("x failed")
    assert "ValueError: boom" in text
    assert "ValueError: boom" in entry["exc"]


@pytest.mark.parametrize(("log_format", "terminal", "expected"), [
    ("auto", True, TextFormatter), ("auto", False, JSONFormatter),
    ("text", False, TextFormatter), ("json", True, JSONFormatter)])
def test_auto_is_text_on_a_terminal_and_json_elsewhere(
        log_format: str, terminal: bool, expected: type[logging.Formatter]) -> None:
    assert type(formatter_for(log_format, terminal=terminal)) is expected  # type: ignore[arg-type]


async def test_the_filter_gives_each_request_task_its_own_id() -> None:
    seen: dict[str, str | None] = {}
    id_filter = RequestIdFilter()

    async def request(request_id: str | None, name: str) -> None:
        if request_id is not None:
            REQUEST_ID.set(request_id)
        await asyncio.sleep(0)  # interleave the two requests
        record = logging.LogRecord(name, logging.INFO, "f.py", 1, "line", None, None)
        assert id_filter.filter(record)
        seen[name] = getattr(record, "request_id", None)

    await asyncio.gather(request("one", "a"), request("two", "b"), request(None, "c"))
    assert seen == {"a": "one", "b": "two", "c": None}
    explicit = logging.LogRecord("x", logging.INFO, "f.py", 1, "line", None, None)
    explicit.request_id = "given"
    REQUEST_ID.set("ambient")
    id_filter.filter(explicit)
    assert explicit.request_id == "given"  # an explicit id is kept
