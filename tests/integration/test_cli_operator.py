"""The operator's commands, run as an operator runs them (a real ``sluice`` process):
``--version``, ``check-config``, and ``serve`` refusing a bad or open configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtests.launch import free_port

KEY = "sk-cli-operator-key-0123456789"
BAD = """\
port: 99999
engines:
  - name: a
    url: http://127.0.0.1:1
    bogus: 1
timeouts: {connect_s: -1}
"""


def sluice(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


def no_traceback(output: str) -> bool:
    return "Traceback" not in output and "╭" not in output and "Error:" not in output


def test_version() -> None:
    run = sluice("--version")
    assert run.returncode == 0
    assert run.stdout.strip().startswith("sluice 0.")


def test_check_config_prints_each_problem_on_its_line(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(BAD)
    run = sluice("check-config", str(config))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "port: Input should be less than or equal to 65535",
        "engines[0].bogus: Extra inputs are not permitted",
        "timeouts.connect_s: Input should be greater than 0"]
    assert no_traceback(run.stderr + run.stdout)


def test_check_config_places_a_yaml_error(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text("port: 8000\nengines: [\n  - {name: a\n")
    run = sluice("check-config", str(config))
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"{config}:3:3: YAML: ")
    missing = sluice("check-config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"{tmp_path / 'absent.yaml'}: no such file"


def test_check_config_refuses_an_open_gateway_off_loopback(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text("host: 0.0.0.0\nengines: [{name: a, url: 'http://127.0.0.1:1'}]\n")
    refused = sluice("check-config", str(config))
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith("auth: host 0.0.0.0 is not loopback and no API key is set")
    assert "auth.allow_unauthenticated: true" in line
    keyed = sluice("check-config", str(config), env={"SLUICE_API_KEYS": f'["{KEY}"]'})
    assert keyed.returncode == 0, keyed.stderr
    assert keyed.stdout.strip() == f"{config}: ok (1 engine(s), listening on 0.0.0.0:8000)"
    with config.open("a") as more:
        more.write("port: 99999\n")
    both = sluice("check-config", str(config))  # reported along with the file's other problems
    assert both.stderr.splitlines() == ["port: Input should be less than or equal to 65535",
                                        line]


def test_serve_with_a_bad_config_says_why_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(BAD)
    run = sluice("serve", "--config", str(config))
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 3
    assert run.stderr.splitlines()[0] == "port: Input should be less than or equal to 65535"
    assert no_traceback(run.stderr + run.stdout)
    flag = sluice("serve", "--config", str(config), "--log-format", "yaml")
    assert "log_format: Input should be 'auto', 'text' or 'json'" in flag.stderr.splitlines()


def test_serve_off_loopback_needs_a_key(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text(f"port: {port}\ndefault_engine: false\n")
    refused = sluice("serve", "--config", str(config), "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1
    assert "SLUICE_API_KEYS" in refused.stderr
    process = subprocess.Popen(  # a key from the environment: it starts
        [sys.executable, "-m", "gateway", "serve", "--config", str(config),
         "--host", "0.0.0.0"], env={**os.environ, "SLUICE_API_KEYS": f'["{KEY}"]'},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"the keyed gateway did not start ({process.poll()})")
                time.sleep(0.1)
        assert health.status_code == 200
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
        assert models.status_code == 401  # the key is required
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
