"""Which engine 404s mean "no such endpoint" (not "no such model")."""

from __future__ import annotations

import pytest

from gateway.core.errors import UpstreamRejected
from gateway.pipeline.connector import endpoint_missing
from gateway.upstream.client import upstream_error


@pytest.mark.parametrize(("status", "raw", "missing"), [
    (404, b'{"error": {"message": "Not Found", "type": "Not Found", "param": null, '
          b'"code": 404}}', True),                                     # vLLM, unknown path
    (404, b'{"detail": "Not Found"}', True),          # FastAPI without vLLM's handlers
    (404, b"404: Not Found", True),                                    # aiohttp's text page
    (404, b"<html>not here</html>", True),
    (404, b'{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",'
          b' "param": "model", "code": 404}}', False),
    (400, b'{"error": {"message": "Not Found", "type": "Not Found"}}', False),
])
def test_a_404_for_the_path_is_an_unsupported_endpoint(status: int, raw: bytes,
                                                       missing: bool) -> None:
    error = upstream_error(status, raw)
    assert isinstance(error, UpstreamRejected)
    assert endpoint_missing(error) is missing
