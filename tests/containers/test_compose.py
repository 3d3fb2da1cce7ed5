"""The cpu compose stack (docker-compose.cpu.yml) under podman-compose: Redis, two
simulated engines and the gateway come up from the images ``make image`` built; a chat
completion is answered, and the same request again is a hit of the cache in Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from loadtests.launch import free_port
from tests.containers.podman import (
    GATEWAY_IMAGE,
    KEY,
    REDIS_IMAGE,
    SIMULATOR_IMAGE,
    chat,
    environment,
    podman,
    run,
    wait_for_chat,
)

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("images")]

COMPOSE_FILE = "docker-compose.cpu.yml"


@dataclass(frozen=True)
class Stack:
    project: str
    url: str

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


@pytest.fixture
def cpu_stack(timings: dict[str, float]) -> Iterator[Stack]:
    """``podman-compose up -d`` under a project name and port of its own; everything it
    made (containers, the project's network) is removed afterwards, pass or fail."""
    project = f"sluicetest{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = environment(REDIS_IMAGE=REDIS_IMAGE, SLUICE_IMAGE=GATEWAY_IMAGE,
                      SLUICE_SIMULATOR_IMAGE=SIMULATOR_IMAGE, SLUICE_PORT=str(port),
                      SLUICE_API_KEYS=json.dumps([KEY]))
    compose = ("podman-compose", "-p", project, "-f", COMPOSE_FILE)
    started = time.monotonic()
    try:
        run(*compose, "up", "-d", env=env, timeout=300)
        yield Stack(project, f"http://127.0.0.1:{port}")
    finally:
        timings["compose: up to down"] = time.monotonic() - started
        run(*compose, "down", env=env, timeout=120, check=False)
        # podman-compose 1.0 leaves the project's network behind, and a failed `up` may
        # leave containers `down` does not know of
        podman("rm", "-f", "-t", "0", "--filter", f"label=io.podman.compose.project={project}",
               check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)
        left = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}")
        assert left == ""


def test_cpu_stack_answers_and_caches_in_redis(cpu_stack: Stack,
                                               timings: dict[str, float]) -> None:
    started = time.monotonic()
    first = wait_for_chat(cpu_stack.url)
    timings["compose: up until the first chat completion"] = time.monotonic() - started
    assert first.json()["choices"][0]["message"]["content"]
    assert first.headers["x-sluice-engine"] in {"sim-0", "sim-1"}
    assert first.headers["x-sluice-cache"] == "miss"

    started = time.monotonic()
    second = chat(cpu_stack.url)
    timings["compose: the same request again (cache hit)"] = time.monotonic() - started
    assert second.status_code == 200
    assert second.headers["x-sluice-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    # the answer is stored in the stack's Redis, not in the gateway's memory
    keys = podman("exec", cpu_stack.container("redis"), "redis-cli", "--scan",
                  "--pattern", "sluice:cache:*")
    assert keys.splitlines()
