"""End-to-end fixtures: ``sluice serve`` with a real vLLM CPU engine, as ``make run`` starts it.

The engine virtualenv and the default model come from ``make engine model`` (``make test``
runs both). Without them these tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.launch import LaunchError
from loadtests.stack import CACHE, ENGINE_PYTHON, MODEL_DIR, RealStack, real_stack

TEST_LORA = CACHE / "adapters" / "sluice-test-lora"


def _require(path: Path, how: str) -> None:
    if path.exists():
        return
    message = f"{path} is missing: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """The gateway and its managed engine, started once for the whole session; stopping
    the gateway must stop the engine (checked at teardown)."""
    _require(ENGINE_PYTHON, "run `make engine`")
    _require(MODEL_DIR / ".sluice-ready", "run `make model`")
    _require(TEST_LORA / ".sluice-ready", "run `make model`")
    try:
        with real_stack(tmp_path_factory.mktemp("e2e") / "gateway.log") as running:
            yield running
    except LaunchError as exc:
        pytest.fail(str(exc))
