"""Per-engine ``api_key`` and ``headers``: what is refused, what is sent, and that the
key shows in no repr, dump or log line."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from gateway.config.settings import EngineConfig, Settings
from gateway.upstream.http1 import _request
from gateway.upstream.transport import EngineHeaders

KEY = "engine-secret-77aa0f"


@pytest.mark.parametrize("name", ["Authorization", "connection", "Transfer-Encoding",
                                  "Host", "Content-Length", "Upgrade", "X-Request-Id"])
def test_hop_by_hop_and_gateway_owned_headers_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"engine 'e0': header '{name}' cannot be set"):
        EngineConfig(name="e0", url="http://x", headers={name: "v"})


@pytest.mark.parametrize(("headers", "message"), [
    ({"X-A": "one\r\nX-B: two"}, "line break"),
    ({"bad name": "v"}, "not a valid header name"),
])
def test_malformed_headers_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EngineConfig(name="e0", url="http://x", headers=headers)


@pytest.mark.parametrize("key", ["", " padded ", "two\nlines"])
def test_an_unusable_key_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(ValidationError, match="api_key is empty or has whitespace") as info:
        EngineConfig(name="e0", url="http://x", api_key=key)
    if key.strip():
        assert key.strip() not in str(info.value)


def test_the_key_goes_out_as_bearer_after_the_extra_headers() -> None:
    config = EngineConfig(name="e0", url="http://x", api_key=KEY, headers={"X-Tenant": "b"})
    assert config.upstream_headers() == {"X-Tenant": "b", "Authorization": f"Bearer {KEY}"}
    head = _request("/v1/chat/completions", "x", {"Content-Type": "application/json"}, b"{}",
                    EngineHeaders.of(config.upstream_headers()).block)
    assert head == (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nX-Tenant: b\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                    b"Content-Length: 2\r\n\r\n{}")


def test_the_key_is_in_no_repr_or_dump_but_reaches_workers(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(default_engine=False, engines=[
        EngineConfig(name="e0", url="http://x", api_key=KEY)])
    headers = EngineHeaders.of(settings.engines[0].upstream_headers())
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sluice").info("settings %r %s %r", settings, settings, headers)
    for text in (repr(settings), str(settings), repr(headers), caplog.text,
                 settings.model_dump_json()):
        assert KEY not in text
    worker = Settings(**settings.for_worker(8000))
    assert worker.engines[0].upstream_headers()["Authorization"] == f"Bearer {KEY}"


def test_an_error_elsewhere_in_an_engine_entry_does_not_quote_its_key() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(default_engine=False,
                 engines=[{"name": "e0", "url": "http://x", "api_key": KEY, "typo": 1}])
    assert "typo" in str(info.value)
    assert KEY not in str(info.value)
