"""The compose files: valid against the compose specification's schema, and in agreement
with the gateway settings they mount (ports, engine and Redis URLs, healthchecks,
Prometheus' targets, Grafana's provisioning)."""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from gateway.config.settings import Settings
from tests.unit.deploy.helpers import (
    PLACEHOLDER_KEY,
    ROOT,
    command_option,
    container_settings,
    gateway_paths,
)

COMPOSE_FILES = sorted(p.name for p in ROOT.glob("docker-compose*.yml"))
CONFIG_IN_CONTAINER = "/etc/sluice/sluice.yaml"
DEFAULTED = re.compile(r"\$\{(\w+)(:?[-?])?([^}]*)\}")


def compose_schema() -> dict[str, Any]:
    """The compose specification's JSON schema (check-jsonschema vendors it)."""
    files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(files.joinpath("compose-spec.json").read_text())
    return schema


def interpolate(value: str) -> str:
    """``${VAR:-default}`` as compose fills it with VAR unset (a required ``${VAR:?msg}``
    becomes a placeholder)."""
    def fill(match: re.Match[str]) -> str:
        variable, operator, word = match.groups()
        if operator and "?" in operator:
            return f'["{PLACEHOLDER_KEY}"]' if variable == "SLUICE_API_KEYS" else "required"
        return word if operator else ""
    return DEFAULTED.sub(fill, value)


def as_list(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> file of this repository, for the service's bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def healthcheck_url(service: dict[str, Any]) -> str | None:
    test = service.get("healthcheck", {}).get("test")
    urls = re.findall(r"https?://[^\s'\"]+", " ".join(as_list(test)))
    return urls[0] if urls else None


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of every published port."""
    ports = set()
    for port in service.get("ports", []):
        text = str(port["target"]) if isinstance(port, dict) else interpolate(str(port))
        ports.add(int(text.rsplit(":", 1)[-1].split("/")[0]))
    return ports


def engine_port(service: dict[str, Any]) -> int:
    """The port a vLLM (or simulator) service listens on: its --port, else vLLM's 8000."""
    return int(command_option(as_list(service.get("command")), "--port") or 8000)


@pytest.fixture(scope="module", params=COMPOSE_FILES)
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / request.param).read_text())
    return doc


def gateway_of(compose: dict[str, Any], tmp: Path) -> tuple[str, dict[str, Any], Settings]:
    """The gateway service (the one mounting a config at /etc/sluice/sluice.yaml) and the
    settings it loads there."""
    for name, service in compose["services"].items():
        config = bind_mounts(service).get(CONFIG_IN_CONTAINER)
        if config is not None:
            assert config.is_file(), f"{name} mounts {config}, which does not exist"
            return name, service, container_settings(config, environment(service))
    raise AssertionError(f"no service mounts a gateway config at {CONFIG_IN_CONTAINER}")


def test_compose_files_are_found() -> None:
    assert "docker-compose.yml" in COMPOSE_FILES


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    jsonschema.validate(compose, compose_schema())


def test_gateway_service_agrees_with_its_settings(compose: dict[str, Any],
                                                  tmp_path: Path) -> None:
    name, service, settings = gateway_of(compose, tmp_path)
    assert settings.host == "0.0.0.0", f"{name}: a container's gateway listens on all interfaces"
    assert container_ports(service) <= {settings.port}, (
        f"{name} publishes {container_ports(service)}, the gateway listens on {settings.port}")
    command = as_list(service.get("command"))
    config_flag = command_option(command, "--config") or command_option(command, "-c")
    assert config_flag in (None, CONFIG_IN_CONTAINER)
    for flag, value in (("--port", settings.port), ("--host", settings.host)):
        given = command_option(command, flag)
        assert given is None or given == str(value), f"{name}: {flag} {given} vs {value}"
    url = healthcheck_url(service)
    if url is not None:
        check = urlsplit(url)
        assert check.path in gateway_paths(), f"{name}: healthcheck {url}: no such route"
        assert (check.port or 80) == settings.port, f"{name}: healthcheck {url}"


def test_engine_urls_name_engine_services(compose: dict[str, Any], tmp_path: Path) -> None:
    _, gateway, settings = gateway_of(compose, tmp_path)
    services = compose["services"]
    engines = settings.resolved_engines()
    assert engines, "the gateway's config lists no engine"
    needed = gateway.get("depends_on", {})
    for engine in engines:
        url = urlsplit(engine.url)
        assert url.hostname in services, f"{engine.url}: no service {url.hostname}"
        service = services[url.hostname]
        assert url.port == engine_port(service), (
            f"{engine.url}: {url.hostname} listens on {engine_port(service)}")
        check = healthcheck_url(service)
        if check is not None:
            assert urlsplit(check).path == "/health"
            assert urlsplit(check).port == engine_port(service)
        if isinstance(needed, dict) and needed:
            assert url.hostname in needed, f"the gateway does not wait for {url.hostname}"
    if settings.redis.url:
        redis = urlsplit(settings.redis.url)
        assert redis.hostname in services, f"redis.url {settings.redis.url}: no such service"


def test_prometheus_scrapes_gateway_and_engines(compose: dict[str, Any],
                                                tmp_path: Path) -> None:
    gateway_name, _, settings = gateway_of(compose, tmp_path)
    services = compose["services"]
    if "prometheus" not in services:
        pytest.skip("no Prometheus in this compose file")
    config_file = bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_file.read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, _, port = target.partition(":")
                assert host in services, f"{config_file.name}: target {target}: no service"
                scraped[host] = int(port)
                if host == gateway_name:
                    assert int(port) == settings.port
                    assert job.get("metrics_path", "/metrics") in gateway_paths()
                    keyless = settings.observability.open or not settings.auth_required
                    assert keyless or "authorization" in job, (
                        "the gateway's /metrics needs a key: this job sends none")
    assert gateway_name in scraped, "Prometheus does not scrape the gateway"
    for engine in settings.resolved_engines():
        url = urlsplit(engine.url)
        assert scraped.get(url.hostname or "") == url.port, f"{url.hostname} is not scraped"


def test_grafana_is_provisioned_from_deploy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    if "grafana" not in services:
        pytest.skip("no Grafana in this compose file")
    mounts = bind_mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == ROOT / "deploy/grafana/provisioning"
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/sluice.yaml").read_text())["providers"]
    for provider in providers:
        assert mounts[provider["options"]["path"]] == ROOT / "deploy/grafana/dashboards"
    sources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    for source in sources["datasources"]:
        assert urlsplit(source["url"]).hostname in services
