"""podman for the container tests: every call reads deploy/containers.conf (runc,
cgroupfs, explicit ulimits), is bounded by a timeout, and fails with its output."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
TAG = os.environ.get("IMAGE_TAG", "latest")
GATEWAY_IMAGE = f"localhost/sluice:{TAG}"
SIMULATOR_IMAGE = f"localhost/sluice-simulator:{TAG}"
REDIS_IMAGE = f"localhost/sluice-redis:{TAG}"
BASE_IMAGE = "localhost/debian:bookworm-min"
KEY = "sk-container-test-0123456789"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment with podman pointed at the project's containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **extra}


def run(*args: str, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command (``podman ...``, ``podman-compose ...``, ``make ...``) from the project's root."""
    result = subprocess.run(list(args), cwd=ROOT, env=env or environment(), capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                             f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}")
    return result


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """``podman ARGS``'s standard output."""
    return run("podman", *args, timeout=timeout, check=check).stdout.strip()


def wait_for_chat(url: str, *, timeout: float = 90) -> httpx.Response:
    """POST one greedy chat completion to ``url`` until the gateway answers 200 (engines
    first need a health check in the gateway); the last answer if it never does."""
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = chat(url)
        except httpx.TransportError:
            last = None
        if last is not None and last.status_code == 200:
            return last
        time.sleep(0.5)
    raise AssertionError(f"no 200 from {url} in {timeout} s; last: "
                         f"{None if last is None else (last.status_code, last.text[:500])}")


def chat(url: str, key: str | None = KEY) -> httpx.Response:
    """One greedy (so cacheable) chat completion through the gateway at ``url``."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "smollm2", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello from the container."}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
