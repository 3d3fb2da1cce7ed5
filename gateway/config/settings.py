"""Typed settings: defaults, then a YAML file, then ``SLUICE_*`` environment variables.

Nested fields use ``__`` in the environment: ``SLUICE_TIMEOUTS__FIRST_TOKEN_S=30``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from adapters import AdapterSpec, under_roots
from engines.spec import EngineSpec
from gateway.config.adapters import LoraSettings
from gateway.config.auth import AuthSettings, is_loopback, open_to_others
from gateway.config.connections import ConnectionLimits, WebSocketSettings
from gateway.config.discovery import Sources
from gateway.config.drain import DrainSettings
from gateway.config.engine_access import check_api_key, check_headers, upstream_headers
from gateway.config.fleet import AdmissionSettings, ResilienceSettings, RoutingSettings
from gateway.config.state import CacheSettings, RedisSettings
from gateway.config.versions import VersionsSettings


class TimeoutSettings(BaseModel):
    """Upstream timeouts, in seconds. None of them may be unbounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float = Field(
        default=5.0, gt=0,
        description="opening a TCP connection to an engine (for a WebSocket to one, the "
                    "whole handshake); past it the request fails with a timeout (504), is "
                    "not retried, and counts as a failure on the engine's breaker")
    first_token_s: float = Field(
        default=120.0, gt=0,
        description="streamed answers: longest silence from the engine until its first "
                    "output (its queue wait and the prefill); past it a 504, not retried, "
                    "counted as a failure on the engine's breaker")
    between_tokens_s: float = Field(
        default=60.0, gt=0,
        description="streamed answers: longest silence between two reads after the first "
                    "(checked at most 1 s late); past it the stream is continued on another "
                    "engine or ends with an error event, counted on the engine's breaker")
    total_s: float = Field(
        default=900.0, gt=0,
        description="a whole answer from the moment it is sent, streamed or not (once "
                    "connected, a non-streamed answer has no other bound); past it a 504, or "
                    "an error event once streaming; never retried or continued, and not "
                    "held against the engine")
    control_s: float = Field(default=5.0, gt=0, description="health, models, metrics")


class PoolSettings(BaseModel):
    """Upstream connection pool bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_connections: int = Field(
        default=4096, ge=1,
        description="connections in use to all engines together, per gateway process "
                    "(idle ones are kept 30 s). Past it a request waits for one to free up: "
                    "a streamed one with no timer running until it has one, a non-streamed "
                    "one within total_s, a health check within control_s (its engine is "
                    "then marked down)")
    max_connections_per_engine: int = Field(
        default=2048, ge=1,
        description="connections in use to one engine, per gateway process; past it a "
                    "request waits as past max_connections")


MIN_API_KEY_CHARS = 16
"""Shortest accepted API key: generated keys are longer; shorter ones are words."""


MIN_ADMIN_TOKEN_CHARS = 32
"""Shortest accepted admin token: it can mint keys, so it must not be guessable."""


class AdminSettings(BaseModel):
    """The admin API (``/admin/keys``: create, list and revoke managed API keys).

    Without ``token`` the admin routes do not exist (404) and only the static
    ``api_keys`` authenticate. With it, authentication is on even while ``api_keys`` is
    empty: every key then comes from the admin API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr | None = Field(
        default=None, description="sent as Authorization: Bearer <token> to /admin/*")

    @field_validator("token")
    @classmethod
    def _usable_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"admin.token is {len(value)} characters long; it needs at "
                             f"least {MIN_ADMIN_TOKEN_CHARS}")
        if not all("!" <= char <= "~" for char in value):
            raise ValueError("admin.token has whitespace or non-ASCII characters; it must "
                             "be printable ASCII (it travels in a header)")
        return token

    @property
    def enabled(self) -> bool:
        return self.token is not None


class ObservabilitySettings(BaseModel):
    """Who may read ``/ready``'s engine list and ``/metrics`` when API keys are set.

    ``open: false`` (the default): without a valid key, ``/ready`` answers its status
    only and ``/metrics`` is a 401. ``open: true``: both answer anyone (engine URLs and
    engine error text still only to key holders). ``/health`` is always open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    open: bool = Field(
        default=False,
        description="true: /metrics and /ready's engine list answer without a key; no "
                    "effect when no keys are required")


class StreamingSettings(BaseModel):
    """How streamed answers are sent to clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keepalive_s: float = Field(
        default=0.0, ge=0,
        description="when > 0, a stream's headers go out once it is admitted and a "
                    "': ping' comment every keepalive_s until its first token, so that a "
                    "proxy's idle timeout does not cut a long queue wait. Off by default: "
                    "a failure before the first token can then no longer be an HTTP error "
                    "status (it is a 200 with an error event), and vLLM sends no pings")


class CorsSettings(BaseModel):
    """Which web pages (origins) may call the gateway from a browser."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_origins: list[str] | None = Field(
        default=None,
        description="exact origins (https://app.example) or '*' for any. Unset: '*' when "
                    "no API keys are configured, none when they are")
    allowed_headers: list[str] = Field(
        default=["authorization", "content-type", "x-request-id", "x-session-id",
                 "cache-control", "x-sluice-cache", "x-sluice-version", "x-stainless-*"],
        description="request headers a page may send; 'prefix*' allows every header "
                    "starting with prefix (x-stainless-*: the OpenAI SDKs' own headers)")
    max_age_s: int = Field(default=600, ge=0, description="how long a browser may keep a "
                                                           "preflight's answer")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str] | None) -> list[str] | None:
        if origins is None:
            return None
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"cors.allowed_origins: {origin[:100]!r} is not an origin; "
                                 "write scheme://host[:port], no path or trailing slash, "
                                 "or '*'")
        return [origin.lower() for origin in origins]


_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+")


class EngineConfig(BaseModel):
    """One engine: either a remote URL or a managed vLLM process."""

    # An error must not quote the input: it may hold the engine's api_key.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        description="the engine's label in metrics, /ready and logs (and its managed log "
                    "file, engine-<name>.log); give each engine its own")
    url: str | None = Field(
        default=None,
        description="a running engine's base URL, without /v1 (http://10.0.0.5:8000): "
                    "requests go to its /v1/... paths, health checks to /health and "
                    "/v1/models; set this or managed")
    managed: EngineSpec | None = None
    max_loras: int | None = Field(
        default=None, ge=0,
        description="LoRA adapters this engine holds at once (0: none); default: the "
                    "max_lora it reports in vllm:lora_requests_info")
    max_lora_rank: int | None = Field(
        default=None, ge=1,
        description="the largest adapter rank it serves (--max-lora-rank); unset: any")
    api_key: SecretStr | None = Field(
        default=None,
        description="the engine's --api-key, sent as Authorization: Bearer on every request "
                    "to it (never logged); a client's own key is never passed on")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra headers sent on every request to the engine (not hop-by-hop, "
                    "Authorization, Host, Content-*, X-Request-Id)")

    @model_validator(mode="after")
    def _one_source(self) -> EngineConfig:
        if (self.url is None) == (self.managed is None):
            raise ValueError(f"engine {self.name!r}: set exactly one of 'url' or 'managed'")
        check_headers(self.name, self.headers)
        check_api_key(self.name, self.api_key)
        return self

    def upstream_headers(self) -> dict[str, str]:
        """What the gateway adds to every request to this engine (the key included)."""
        return upstream_headers(self.api_key, self.headers)

    @property
    def lora_bound(self) -> int | None:
        """``max_loras``, else a managed engine's own (None: as the engine reports)."""
        if self.max_loras is not None or self.managed is None:
            return self.max_loras
        return self.managed.max_loras if self.managed.enable_lora else 0

    @property
    def lora_rank(self) -> int | None:
        if self.max_lora_rank is not None or self.managed is None:
            return self.max_lora_rank
        return self.managed.max_lora_rank

    @property
    def base_url(self) -> str:
        if self.managed is not None:
            return self.managed.url
        assert self.url is not None
        return self.url.rstrip("/")


class Settings(BaseSettings):
    """The gateway's whole configuration."""

    # hide_input_in_errors: a start-up error must not print the API keys it rejected.
    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", env_nested_delimiter="__", extra="forbid", frozen=True,
        hide_input_in_errors=True,
    )

    host: str = Field(
        default="127.0.0.1",
        description="address the gateway listens on (every worker); 0.0.0.0 or :: for "
                    "every interface")
    port: int = Field(default=8000, ge=0, le=65535,
                      description="port the gateway listens on; 0: a free one, picked at start")
    workers: int = Field(
        default=1, ge=1, le=64,
        description="gateway processes sharing the port (SO_REUSEPORT); managed engines "
                    "are started once, by the parent",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="static keys clients send as Authorization: Bearer <key> (at least 16 "
                    "printable ASCII characters each; no limits, every model); empty and no "
                    "admin.token: no key is needed")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="largest HTTP request body; larger is a 413 (WebSocket messages: "
                    "websocket.max_message_bytes)")
    max_answer_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024,
        description="largest non-streamed engine answer relayed; larger is a 502")
    max_event_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="largest single streamed event from an engine; larger is a fault")
    engines: list[EngineConfig] = Field(default_factory=list)
    discovery: Sources = Field(
        default_factory=list,
        description="DNS sources of more engines, re-resolved while serving (see "
                    "gateway/config/discovery.py: name, dns_name, record, port, ...)")
    default_engine: bool = Field(
        default=True,
        description="with no engines configured, manage one CPU engine on the default model",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "sluice",
        description="where the default model is prepared (models/) and managed engines "
                    "log (logs/engine-<name>.log)")
    engine_python: Path = Field(
        default=Path(".venv-engine/bin/python"),
        description="the interpreter (with vLLM) of the default managed engine and of "
                    "sluice prepare-model, relative to the working directory (an engine "
                    "of engines has its own: managed.python)")
    engine_port: int = Field(default=8100, ge=1, le=65535,
                             description="the default managed engine's port (on 127.0.0.1)")
    health_interval_s: float = Field(
        default=1.0, gt=0,
        description="pause between two health checks of every engine (/health, then "
                    "/v1/models: its models and LoRA adapters); an engine marked down is "
                    "routed to again only once one passes")
    timeouts: TimeoutSettings = TimeoutSettings()
    pool: PoolSettings = PoolSettings()
    limits: ConnectionLimits = ConnectionLimits()
    websocket: WebSocketSettings = WebSocketSettings()
    routing: RoutingSettings = RoutingSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    admission: AdmissionSettings = AdmissionSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    admin: AdminSettings = AdminSettings()
    auth: AuthSettings = Field(default_factory=AuthSettings, validate_default=True)
    drain: DrainSettings = DrainSettings()
    streaming: StreamingSettings = StreamingSettings()
    cors: CorsSettings = CorsSettings()
    cache: CacheSettings = CacheSettings()
    redis: RedisSettings = RedisSettings()
    versions: VersionsSettings = VersionsSettings()
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        description="LoRA adapters clients may name as model, each loaded on demand onto "
                    "an engine serving its base (name, base, path; rank, version, owner, "
                    "pinned optional)")
    lora: LoraSettings = LoraSettings()
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="least level of the log lines on stderr (--log-level); warning or "
                    "error also silences the access log (its lines are info); probes are "
                    "logged at debug")
    log_format: Literal["auto", "text", "json"] = Field(
        default="auto",
        description="log lines on stderr (--log-format): text for people, json (one "
                    "object a line) for collectors; auto: text when stderr is a terminal, "
                    "else json")
    access_log: bool = Field(
        default=True,
        description="one log line per HTTP request (sluice.access: request id, method, "
                    "path, status, duration, key id; for a generation request also model, "
                    "version, engine, tokens, TTFT and outcome; probes at debug)")
    playground: bool = Field(
        default=True, description="serve the chat playground page at / (open without a key)")

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[str]) -> list[str]:
        for index, key in enumerate(keys):
            if len(key) < MIN_API_KEY_CHARS:
                raise ValueError(f"api_keys[{index}] is {len(key)} characters long; an API "
                                 f"key needs at least {MIN_API_KEY_CHARS}")
            if not all("!" <= char <= "~" for char in key):
                raise ValueError(f"api_keys[{index}] has whitespace or non-ASCII characters; "
                                 "a key must be printable ASCII (it travels in a header)")
        return keys

    @model_validator(mode="after")
    def _adapters_registered(self) -> Settings:
        names: set[str] = set()
        for spec in self.adapters:
            if spec.name in names:
                raise ValueError(f"adapters: {spec.name!r} is registered twice")
            names.add(spec.name)
            if not under_roots(spec.path, self.lora.roots):
                raise ValueError(f"adapters: {spec.name!r} path {spec.path!r} is not under "
                                 f"lora.roots ({', '.join(self.lora.roots)})")
        return self

    @model_validator(mode="after")
    def _keys_shared(self) -> Settings:
        if self.admin.enabled and self.workers > 1 and not self.redis.url:
            raise ValueError("admin.token with workers > 1 and no redis.url: managed keys "
                             "and their limits would live in each process's memory, so "
                             "the workers would not share them; run one worker or set "
                             "redis.url")
        return self

    @field_validator("auth")
    @classmethod
    def _keyed_off_loopback(cls, auth: AuthSettings, info: ValidationInfo) -> AuthSettings:
        """A field's check (after host, api_keys and admin) rather than the whole
        model's, so that it is reported alongside the other problems of a file."""
        seen = info.data
        if {"host", "api_keys", "admin"} <= seen.keys() and not (
                seen["api_keys"] or seen["admin"].enabled or auth.allow_unauthenticated
                or is_loopback(seen["host"])):
            raise ValueError(open_to_others(seen["host"]))
        return auth

    @property
    def auth_required(self) -> bool:
        """Requests need a key: static ``api_keys`` are set, or managed keys are on."""
        return bool(self.api_keys) or self.admin.enabled

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @property
    def cors_origins(self) -> list[str]:
        """The origins allowed: as configured, else any without API keys and none with."""
        if self.cors.allowed_origins is not None:
            return self.cors.allowed_origins
        return [] if self.auth_required else ["*"]

    @property
    def default_model_dir(self) -> Path:
        return self.cache_dir / "models" / "SmolLM2-135M-Instruct"

    @property
    def log_dir(self) -> Path:
        return self.cache_dir / "logs"

    def resolved_engines(self) -> list[EngineConfig]:
        """The configured engines, or the embedded default managed engine."""
        if self.engines or not self.default_engine:
            return list(self.engines)
        spec = EngineSpec(
            model=self.default_model_dir,
            served_name="smollm2",
            python=self.engine_python,
            port=self.engine_port,
        )
        return [EngineConfig(name="cpu-0", managed=spec)]

    def for_worker(self, port: int) -> dict[str, Any]:
        """The settings of one worker process, as plain data: every engine (managed
        ones included, which the parent runs) as a URL with its options (a managed one's
        adapter bounds included), on the parent's resolved port."""
        engines = [{**e.model_dump(mode="json", exclude={"managed", "url", "api_key"}),
                    "url": e.base_url, "max_loras": e.lora_bound, "max_lora_rank": e.lora_rank,
                    "api_key": e.api_key and e.api_key.get_secret_value()}
                   for e in self.resolved_engines()]
        token = self.admin.token
        admin = {"token": None if token is None else token.get_secret_value()}
        return {**self.model_dump(mode="json"), "engines": engines, "default_engine": False,
                "port": port, "workers": 1, "admin": admin}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from an optional YAML file, the environment and explicit overrides."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    file_cls = type(
        "FileSettings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "yaml_file": config_file})},
    )
    settings: Settings = file_cls(**overrides)
    return settings
