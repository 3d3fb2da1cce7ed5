"""A real Sluice stack for benchmarks and end-to-end tests: ``sluice serve`` with its
managed vLLM engine, started exactly as ``make run`` starts it, on free loopback ports
(through ``loadtests.launch``)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.launch import (
    HOST,
    NO_DRAIN_DELAY,
    ROOT,
    Launch,
    LaunchError,
    free_port,
    spawn,
    stop,
    wait_ready,
)

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
CACHE = Path(os.environ.get("SLUICE_CACHE_DIR", Path.home() / ".cache" / "sluice"))
MODEL_DIR = CACHE / "models" / "SmolLM2-135M-Instruct"
SERVED_NAME = "smollm2"
STOP_GRACE_S = 60.0
"""How long the gateway has to stop its engine after SIGTERM."""


@dataclass(frozen=True)
class RealStack:
    gateway: str
    engine: str
    model: str
    log: Path


@contextmanager
def real_stack(log: Path, *, ready_timeout_s: float = 420,
               extra_env: dict[str, str] | None = None) -> Iterator[RealStack]:
    """Start ``python -m gateway serve`` (default managed engine) and wait until ready.

    Call it outside an event loop. On exit the gateway gets SIGTERM, which stops its
    engine; raises ``LaunchError`` if it does not start, or if the engine still answers
    30 s after the gateway stopped.
    """
    gateway_port, engine_port = free_port(), free_port()
    stack = RealStack(f"http://{HOST}:{gateway_port}", f"http://{HOST}:{engine_port}",
                      SERVED_NAME, log)
    env = {"SLUICE_PORT": str(gateway_port), "SLUICE_ENGINE_PORT": str(engine_port),
           "SLUICE_ENGINE_PYTHON": str(ENGINE_PYTHON), "SLUICE_CACHE_DIR": str(CACHE),
           **NO_DRAIN_DELAY,
           **(extra_env or {})}
    launch = Launch([sys.executable, "-m", "gateway", "serve"], stack.gateway, log, env,
                    ready_path="/ready")
    process = spawn(launch)
    try:
        asyncio.run(wait_ready(launch, process, ready_timeout_s))
        yield stack
    finally:
        stop(process, STOP_GRACE_S)
    _wait_engine_stopped(stack.engine)


def _wait_engine_stopped(engine: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(engine + "/health", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.5)
    raise LaunchError(f"engine at {engine} still answers after the gateway stopped")
