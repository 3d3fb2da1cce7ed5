from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config.settings import EngineConfig, Settings, load_settings


def test_defaults_manage_one_cpu_engine() -> None:
    settings = Settings()
    engines = settings.resolved_engines()
    assert len(engines) == 1
    assert engines[0].managed is not None
    assert engines[0].managed.served_name == "smollm2"
    assert engines[0].base_url == "http://127.0.0.1:8100"


def test_yaml_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(
        "port: 9000\n"
        "timeouts: {first_token_s: 7}\n"
        "engines:\n"
        "  - {name: a, url: 'http://10.0.0.1:8000/'}\n"
        "  - name: b\n"
        "    managed: {model: /models/x, served_name: x, port: 8200}\n")
    monkeypatch.setenv("SLUICE_PORT", "9100")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.timeouts.first_token_s == 7
    assert [e.base_url for e in settings.resolved_engines()] == [
        "http://10.0.0.1:8000", "http://127.0.0.1:8200"]


def test_nested_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TIMEOUTS__CONNECT_S", "0.5")
    assert Settings().timeouts.connect_s == 0.5


def test_engine_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        EngineConfig(name="x")
    with pytest.raises(ValidationError, match="exactly one"):
        EngineConfig.model_validate({"name": "x", "url": "http://a",
                                     "managed": {"model": "/m", "served_name": "m"}})


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.yaml")


def test_no_default_engine_when_disabled() -> None:
    assert Settings(default_engine=False).resolved_engines() == []


@pytest.mark.parametrize("key", [
    "", "short-key", "has a space in it!!", "caf\u00e9-0123456789abcdef"])
def test_unusable_api_keys_are_refused_without_being_printed(key: str) -> None:
    good = "sk-0123456789abcdef"
    with pytest.raises(ValidationError, match=r"api_keys\[1\]") as info:
        Settings(api_keys=[good, key])
    assert good not in str(info.value)


def test_api_keys_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_API_KEYS", '[""]')
    with pytest.raises(ValidationError, match="at least 16"):
        Settings()
    monkeypatch.setenv("SLUICE_API_KEYS", '["sk-0123456789abcdef"]')
    assert Settings().api_keys == ["sk-0123456789abcdef"]


def test_a_worker_gets_every_engine_as_a_url() -> None:
    settings = Settings(workers=3, engines=[
        EngineConfig(name="a", url="http://10.0.0.1:8000/"),
        {"name": "b", "managed": {"model": "/models/x", "served_name": "x", "port": 8200}}])
    worker = Settings(**settings.for_worker(port=9001))
    assert worker.workers == 1
    assert worker.port == 9001
    assert [(e.name, e.url) for e in worker.engines] == [
        ("a", "http://10.0.0.1:8000"), ("b", "http://127.0.0.1:8200")]
    assert worker.resolved_engines() == worker.engines


def test_the_default_engine_is_handed_to_workers_as_a_url() -> None:
    worker = Settings(**Settings(workers=2).for_worker(port=8000))
    assert not worker.default_engine
    assert [e.url for e in worker.engines] == ["http://127.0.0.1:8100"]


def test_connection_limits_are_handed_to_workers() -> None:
    limits = {"max_connections": 64, "max_header_bytes": 8192, "max_headers": 20,
              "header_timeout_s": 2.5, "body_timeout_s": 4.0, "keep_alive_s": 20,
              "body_deadline_s": 60.0, "reserved_connections": 2,
              "max_connections_per_address": 16}
    worker = Settings(**Settings(workers=2, limits=limits).for_worker(port=8000))
    assert worker.limits.model_dump() == limits


def test_cors_origins_default_to_any_only_without_api_keys() -> None:
    assert Settings().cors_origins == ["*"]
    assert Settings(api_keys=["k" * 20]).cors_origins == []
    configured = Settings(api_keys=["k" * 20],
                          cors={"allowed_origins": ["https://App.example:8443"]})
    assert configured.cors_origins == ["https://app.example:8443"]
    assert Settings(cors={"allowed_origins": []}).cors_origins == []


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/", "https://a.b/c",
                                    "https://a b", "**"])
def test_a_cors_origin_must_be_scheme_and_host(origin: str) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(cors={"allowed_origins": [origin]})


def test_keepalive_is_off_by_default() -> None:
    assert Settings().streaming.keepalive_s == 0
    with pytest.raises(ValidationError):
        Settings(streaming={"keepalive_s": -1})


def test_admin_token_must_be_long_printable_and_single_worker() -> None:
    with pytest.raises(ValidationError, match=r"admin\.token is 10 characters") as info:
        Settings(admin={"token": "short-word"})
    assert "short-word" not in str(info.value)
    with pytest.raises(ValidationError, match="printable ASCII"):
        Settings(admin={"token": "x" * 31 + " "})
    with pytest.raises(ValidationError, match="workers > 1"):
        Settings(admin={"token": "t" * 32}, workers=2)
    shared = Settings(admin={"token": "t" * 32}, workers=2,
                      redis={"url": "redis://127.0.0.1:6390/0"})
    assert shared.workers == 2  # the workers share keys and windows in Redis
    settings = Settings(admin={"token": "t" * 32})
    assert settings.admin.enabled
    assert settings.auth_required
    assert "t" * 32 not in repr(settings)
    assert settings.cors_origins == []
    assert not Settings().auth_required


def test_redis_settings_default_to_memory_and_check_their_url() -> None:
    from gateway.config.settings import Settings
    from gateway.config.state import RedisSettings

    assert Settings().redis.url == ""
    assert RedisSettings().fail_open
    assert RedisSettings(url="redis://localhost:6379/0").url.startswith("redis://")
    with pytest.raises(ValueError, match=r"redis\.url must start"):
        RedisSettings(url="localhost:6379")
    with pytest.raises(ValueError, match="slot_ttl_s"):
        RedisSettings(probe_interval_s=5, slot_ttl_s=10)


def test_redis_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.settings import Settings

    monkeypatch.setenv("SLUICE_REDIS__URL", "redis://cache:6379/1")
    assert Settings().redis.url == "redis://cache:6379/1"
