"""A real Sluice stack for benchmarks and end-to-end tests: ``sluice serve`` with its
managed vLLM engine, started exactly as ``make run`` starts it, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
CACHE = Path(os.environ.get("SLUICE_CACHE_DIR", Path.home() / ".cache" / "sluice"))
MODEL_DIR = CACHE / "models" / "SmolLM2-135M-Instruct"
SERVED_NAME = "smollm2"


class StackError(RuntimeError):
    """The stack did not start (its log tail is in the message)."""


@dataclass(frozen=True)
class RealStack:
    gateway: str
    engine: str
    model: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def real_stack(log: Path, *, ready_timeout_s: float = 420,
               extra_env: dict[str, str] | None = None) -> Iterator[RealStack]:
    """Start ``python -m gateway serve`` (default managed engine) and wait until ready.

    On exit the gateway gets SIGTERM, which stops its engine; raises StackError if the
    engine still answers 30 s later.
    """
    gateway_port, engine_port = free_port(), free_port()
    env = {**os.environ, "SLUICE_PORT": str(gateway_port),
           "SLUICE_ENGINE_PORT": str(engine_port), "SLUICE_ENGINE_PYTHON": str(ENGINE_PYTHON),
           "SLUICE_CACHE_DIR": str(CACHE), **(extra_env or {})}
    stack = RealStack(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{engine_port}",
                      SERVED_NAME, log)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(stack, process, ready_timeout_s)
        yield stack
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    _wait_engine_stopped(stack.engine)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _wait_ready(stack: RealStack, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"sluice serve exited ({process.returncode}):\n{_tail(stack.log)}")
        try:
            if httpx.get(stack.gateway + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise StackError(f"engine not ready after {timeout_s:.0f} s:\n{_tail(stack.log)}")


def _wait_engine_stopped(engine: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(engine + "/health", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.5)
    raise StackError(f"engine at {engine} still answers after the gateway stopped")
