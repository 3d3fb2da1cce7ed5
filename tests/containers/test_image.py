"""The gateway and simulator images: built here from the local Debian base, run as an
unprivileged user, report healthy, carry only the gateway's code, and serve a chat
completion from a gateway container to a simulator container on a podman network."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from loadtests.launch import free_port
from tests.containers.podman import (
    BASE_IMAGE,
    GATEWAY_IMAGE,
    KEY,
    SIMULATOR_IMAGE,
    chat,
    podman,
    run,
    wait_for_chat,
)

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("images")]


def inspect(image: str) -> dict[str, object]:
    data: list[dict[str, object]] = json.loads(podman("image", "inspect", image))
    return data[0]


def test_images_build_from_the_local_debian_base() -> None:
    base_layers = inspect(BASE_IMAGE)["RootFS"]["Layers"]  # type: ignore[index]
    for image in (GATEWAY_IMAGE, SIMULATOR_IMAGE):
        layers = inspect(image)["RootFS"]["Layers"]  # type: ignore[index]
        assert layers[: len(base_layers)] == base_layers, image


@pytest.mark.parametrize("image", [GATEWAY_IMAGE, SIMULATOR_IMAGE])
def test_images_run_as_a_non_root_user(image: str) -> None:
    assert inspect(image)["Config"]["User"] == "sluice"  # type: ignore[index]
    uid = podman("run", "--rm", "--entrypoint", "id", image, "-u")
    assert uid.isdigit()
    assert int(uid) != 0


def test_gateway_image_has_no_loadtests_or_simulator() -> None:
    probe = ("import importlib.util as u, json; print(json.dumps({name: u.find_spec(name) "
             "is not None for name in ('gateway', 'engines', 'loadtests', 'simulator')}))")
    found = json.loads(podman("run", "--rm", "--entrypoint", "python3", GATEWAY_IMAGE,
                              "-c", probe))
    assert found == {"gateway": True, "engines": True, "loadtests": False,
                     "simulator": False}
    scripts = podman("run", "--rm", "--entrypoint", "ls", GATEWAY_IMAGE, "/opt/sluice/bin")
    assert "sluice" in scripts.split()
    assert "sluice-bench" not in scripts.split()
    assert "sluice-sim" not in scripts.split()


@pytest.fixture
def network() -> Iterator[str]:
    """A podman bridge network of this test's own; its containers are removed with it."""
    name = f"sluice-test-{uuid.uuid4().hex[:8]}"
    podman("network", "create", name)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", "--filter", f"network={name}", check=False)
        podman("network", "rm", "-f", name, check=False)


def wait_healthy(container: str, timeout: float = 60) -> None:
    """``podman healthcheck run`` (the image's HEALTHCHECK) until it passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = run("podman", "healthcheck", "run", container, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            logs = run("podman", "logs", container, check=False)
            raise AssertionError(f"{container} not healthy in {timeout} s: {result.stdout}"
                                 f"{result.stderr}\n{logs.stdout}{logs.stderr}")
        time.sleep(1)


def test_chat_through_the_gateway_container_to_a_simulator_container(
        network: str, timings: dict[str, float]) -> None:
    sim, gateway = f"{network}-sim", f"{network}-gateway"
    port = free_port()
    started = time.monotonic()
    podman("run", "-d", "--name", sim, "--network", network, SIMULATOR_IMAGE,
           "--model", "smollm2")
    podman("run", "-d", "--name", gateway, "--network", network,
           "-p", f"127.0.0.1:{port}:8000",
           "-e", f"SLUICE_API_KEYS={json.dumps([KEY])}",
           "-e", f"SLUICE_ENGINES={json.dumps([{'name': 'sim', 'url': f'http://{sim}:8000'}])}",
           GATEWAY_IMAGE)
    wait_healthy(sim)
    wait_healthy(gateway)
    timings["image: containers up and healthy"] = time.monotonic() - started
    url = f"http://127.0.0.1:{port}"

    started = time.monotonic()
    answer = wait_for_chat(url)
    timings["image: first chat completion"] = time.monotonic() - started
    body = answer.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert answer.headers["x-sluice-engine"] == "sim"

    assert chat(url, key=None).status_code == 401
    assert chat(url, key="sk-not-a-key-of-this-gateway").status_code == 401
