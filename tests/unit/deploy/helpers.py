"""What the deployment checks share: the gateway's settings as a container would load
them, its routes, the drain window, and where the tools and the vLLM source are."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
UVICORN_BACKSTOP_S = 5.0
"""uvicorn's own shutdown wait after the gateway's drain (see gateway.edge.server)."""
PLACEHOLDER_KEY = "a-placeholder-api-key-0123456789"


def tool(name: str) -> str:
    """An executable of the gateway's environment (the dev extra installs kubectl), else
    one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} not found: install the dev extra (make gateway)"
    return found


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Only ``env`` among the SLUICE_* variables while the block runs (as in a container)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLUICE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def container_settings(config: Path, env: dict[str, str]) -> Settings:
    """The settings a gateway container loads from ``config`` with ``env`` set."""
    with environment(env):
        return load_settings(config)


def gateway_paths() -> set[str]:
    """Every HTTP path the gateway's router serves."""
    app = create_app(Settings(default_engine=False, playground=False))
    return {route.path for route in app.router.routes}


def drain_window_s(settings: Settings) -> float:
    """How long a SIGTERM may take before the process exits: the readiness delay, the
    streams' drain and uvicorn's backstop (a gateway without ``drain.delay_s`` has only
    the drain timeout)."""
    drain: Any = getattr(settings, "drain", None)
    if drain is not None:
        return float(drain.delay_s) + float(drain.timeout_s) + UVICORN_BACKSTOP_S
    return float(settings.resilience.drain_timeout_s) + UVICORN_BACKSTOP_S


def vllm_source() -> Path:
    """The vllm package installed in the engine's virtualenv (``make engine``; ``make
    test`` builds it): without it the test is skipped here and fails in CI."""
    found = sorted((ROOT / ".venv-engine").glob("lib/python3*/site-packages/vllm"))
    if not found:
        message = "the engine virtualenv has no vllm package: run `make engine`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


def vllm_metric_names() -> set[str]:
    """Every ``vllm:`` metric name vLLM's source declares."""
    names: set[str] = set()
    for path in vllm_source().rglob("*.py"):
        text = path.read_text(errors="replace")
        if "vllm:" in text:
            names.update(re.findall(r"[\"'](vllm:[a-z0-9_:]+)[\"']", text))
    return names


def gateway_metric_names() -> set[str]:
    """Every metric family the gateway's registry declares."""
    from gateway.observability.metrics import GatewayMetrics

    return {family.name for family in GatewayMetrics().registry.collect()}


SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_info")


def declared(name: str, families: set[str]) -> bool:
    """Whether a series name belongs to one of ``families`` (a counter's ``_total``, a
    histogram's ``_bucket``...)."""
    if name in families:
        return True
    return any(name.endswith(s) and name[: -len(s)] in families for s in SAMPLE_SUFFIXES)


def command_option(command: list[str], option: str) -> str | None:
    """The value of ``--option V`` or ``--option=V`` in an argument list."""
    for i, arg in enumerate(command):
        if arg == option and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None
