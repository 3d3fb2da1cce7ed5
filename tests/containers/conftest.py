"""The container tests: the images ``make image`` builds (from the local Debian base),
and the cpu compose stack. Each test's containers and networks carry a unique name and
are removed at teardown, pass or fail. ``timings`` durations are printed at the end."""

from __future__ import annotations

import time

import pytest

from tests.containers.podman import run

TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def timings(pytestconfig: pytest.Config) -> dict[str, float]:
    """Named durations (seconds) the tests measured; printed in the terminal summary."""
    return pytestconfig.stash.setdefault(TIMINGS, {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    measured = config.stash.get(TIMINGS, {})
    if measured:
        terminalreporter.section("container timings")
        for name, seconds in measured.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def images(timings: dict[str, float]) -> None:
    """The three images, built here by ``make image`` (from the local Debian base; a
    cached build when ``make test`` built them already)."""
    started = time.monotonic()
    run("make", "-s", "image", timeout=900)
    timings["make image"] = time.monotonic() - started
