"""End-to-end fixtures: ``sluice serve`` with a real vLLM CPU engine, as ``make run`` starts it.

The engine virtualenv and the default model come from ``make engine model`` (``make test``
runs both). Without them these tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
CACHE = Path(os.environ.get("SLUICE_CACHE_DIR", Path.home() / ".cache" / "sluice"))
MODEL_DIR = CACHE / "models" / "SmolLM2-135M-Instruct"
TEST_LORA = CACHE / "adapters" / "sluice-test-lora"
READY_TIMEOUT_S = 420


@dataclass(frozen=True)
class RealStack:
    gateway: str
    engine: str
    model: str
    lora_dir: Path


def _require(path: Path, how: str) -> None:
    if path.exists():
        return
    message = f"{path} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The gateway and its managed engine, started once for the whole session."""
    _require(ENGINE_PYTHON, "run `make engine`")
    _require(MODEL_DIR / ".sluice-ready", "run `make model`")
    gateway_port, engine_port = free_port(), free_port()
    env = {**os.environ, "SLUICE_PORT": str(gateway_port), "SLUICE_ENGINE_PORT": str(engine_port),
           "SLUICE_ENGINE_PYTHON": str(ENGINE_PYTHON), "SLUICE_CACHE_DIR": str(CACHE)}
    log = tmp_path_factory.mktemp("e2e") / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    stack = RealStack(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{engine_port}",
                      "smollm2", TEST_LORA)
    try:
        _wait_ready(stack.gateway, process, log)
        yield stack
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    _assert_engine_stopped(stack.engine)


def _wait_ready(gateway: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sluice serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(gateway + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"engine not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _assert_engine_stopped(engine: str) -> None:
    """Stopping the gateway stops its engine: the engine port must close."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(engine + "/health", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.5)
    raise AssertionError(f"engine at {engine} still answers after the gateway stopped")
