import orjson

from gateway.core.errors import (
    ContextLengthExceeded,
    EngineTimeout,
    NoHealthyEngine,
    Overloaded,
    SluiceError,
    UpstreamRejected,
)


def test_error_body_has_the_openai_shape() -> None:
    error = ContextLengthExceeded("too long", param="max_tokens")
    assert orjson.loads(error.to_json()) == {"error": {
        "message": "too long", "type": "invalid_request_error",
        "param": "max_tokens", "code": "context_length_exceeded"}}
    assert error.status_code == 400


def test_statuses_follow_the_tree() -> None:
    assert NoHealthyEngine("x").status_code == 503
    assert EngineTimeout("x").status_code == 504
    assert UpstreamRejected("x", status=418).status_code == 418
    assert SluiceError("x").status_code == 500


def test_overloaded_carries_retry_after() -> None:
    error = Overloaded("busy", retry_after_s=3)
    assert error.status_code == 429
    assert error.headers == {"Retry-After": "3"}
