"""The engine client's log of an engine's 5xx: a bounded excerpt, secrets redacted."""

from __future__ import annotations

import logging

import pytest

from gateway.config.settings import TimeoutSettings
from gateway.core.errors import EngineError
from gateway.upstream.client import EngineClient
from gateway.upstream.memory import MemoryRequest, MemoryResponse, MemoryTransport

SECRET_BODY = (b'{"error": "upstream auth failed: Authorization: Bearer tok-9f8e7d6c5b4a '
               b'api_key=sk-live-0123456789abcdef password: hunter2 ' + b"x" * 5000 + b'"}')


async def test_an_engine_5xx_is_logged_as_a_bounded_redacted_excerpt(
        caplog: pytest.LogCaptureFixture) -> None:
    async def failing(request: MemoryRequest) -> MemoryResponse:
        return MemoryResponse(500, SECRET_BODY)

    client = EngineClient("e0", "http://e0", MemoryTransport(failing), TimeoutSettings())
    with caplog.at_level(logging.WARNING, logger="sluice.engines"), \
            pytest.raises(EngineError):
        async with client.open("/v1/chat/completions", b"{}", streamed=False):
            pass
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "answered HTTP 500" in logged
    for secret in ("tok-9f8e7d6c5b4a", "sk-live-0123456789abcdef", "hunter2"):
        assert secret not in logged
    assert "upstream auth failed" in logged  # the excerpt still says what happened
    assert len(logged) < 600
