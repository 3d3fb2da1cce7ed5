"""The gateway image's own settings (/etc/sluice/sluice.yaml, SLUICE_DEFAULT_ENGINE):
with only keys set it listens on 0.0.0.0 with no engine at all, and never tries to
prepare the default model (the image has no vLLM); a mounted file replaces its settings."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.launch import free_port
from tests.containers.podman import GATEWAY_IMAGE, KEY, SIMULATOR_IMAGE, podman, wait_for_chat

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("images")]


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Containers (and, last, a network) this test made, removed afterwards."""
    made: list[str] = []
    yield made
    for name in reversed(made):
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("network", "rm", "-f", name, check=False)


def _wait_health(url: str, container: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(podman("logs", container, check=False))
        time.sleep(0.2)


def test_default_settings_serve_no_engine_and_prepare_no_model(names: list[str]) -> None:
    port, name = free_port(), f"sluice-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000",
           "-e", f"SLUICE_API_KEYS={json.dumps([KEY])}", GATEWAY_IMAGE)
    url = f"http://127.0.0.1:{port}"
    _wait_health(url, name)
    models = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert models.status_code == 200
    assert models.json()["data"] == []
    assert httpx.get(url + "/ready").status_code == 503
    assert httpx.get(url + "/v1/models").status_code == 401
    logs = podman("logs", name)
    assert "Preparing the default model" not in logs
    assert podman("inspect", name, "--format", "{{.State.Status}}") == "running"


def test_a_mounted_settings_file_replaces_the_images(names: list[str], tmp_path: Path) -> None:
    network = f"sluice-test-{uuid.uuid4().hex[:8]}"
    sim, gateway = f"{network}-sim", f"{network}-gateway"
    podman("network", "create", network)
    names.extend([network, sim, gateway])
    podman("run", "-d", "--name", sim, "--network", network, SIMULATOR_IMAGE,
           "--model", "smollm2")
    config = tmp_path / "sluice.yaml"
    config.write_text(f"host: 0.0.0.0\nport: 8000\nengines:\n"
                      f"  - name: mounted\n    url: http://{sim}:8000\n")
    config.chmod(0o644)
    port = free_port()
    podman("run", "-d", "--name", gateway, "--network", network,
           "-p", f"127.0.0.1:{port}:8000", "-e", f"SLUICE_API_KEYS={json.dumps([KEY])}",
           "-v", f"{config}:/etc/sluice/sluice.yaml:ro", GATEWAY_IMAGE)
    answer = wait_for_chat(f"http://127.0.0.1:{port}")
    assert answer.headers["x-sluice-engine"] == "mounted"
