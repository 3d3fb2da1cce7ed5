"""Engine fleets and gateways as real processes, for benchmarks that need several of them.

    async with sim_fleet(4, {"decode_step_ms": 12, "kv_capacity_tokens": 32768},
                         log_dir=out / "logs") as fleet:
        async with gateway_process(gateway_settings(fleet.urls), log_dir=out / "logs") as gw:
            ...                      # gw.url, gw.pid, gw.stats() (RSS, CPU time)
            fleet.kill(2)            # SIGKILL engine 2, as a crash
            await fleet.restart(2)   # start it again on the same port, wait for /health

Every process gets its own process group (stopping it stops what it spawned, as vLLM's
engine core) and SIGTERM if this process dies first; every one is stopped when its
``async with`` block ends, however it ends. Ports come from ``loadtests.stack.free_port``;
engine ``i`` keeps its port across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from engines.spec import EngineSpec
from loadtests.proc import ProcStats, read_stats
from loadtests.stack import ROOT, free_port
from simulator.config import SimConfig

HOST = "127.0.0.1"
STOP_GRACE_S = 20.0
"""How long a process has between SIGTERM and SIGKILL."""
_PR_SET_PDEATHSIG = 1
_SIM_FLAGS = frozenset({"prefix_caching", "hang"})
"""Boolean SimConfig fields, spelled ``--name/--no-name`` on the simulator's command line."""


class FleetError(RuntimeError):
    """A process did not start or did not become ready (its log tail is in the message)."""


@dataclass(frozen=True)
class Launch:
    """How to start one server process, and where it answers."""

    argv: list[str]
    url: str
    log: Path | None = None
    env: Mapping[str, str | None] | None = None
    """Changes to the inherited environment; None removes a variable."""
    ready_path: str = "/health"


def sim_command(port: int, fields: Mapping[str, Any]) -> list[str]:
    """The argv of ``python -m simulator`` with these ``SimConfig`` fields.

    The fields are validated first (``ValidationError`` for a bad one); only those given
    are passed, so the others keep the simulator's defaults.
    """
    SimConfig.model_validate(fields)
    argv = [sys.executable, "-m", "simulator", "--host", HOST, "--port", str(port),
            "--log-level", "WARNING"]
    for name, value in fields.items():
        option = "--" + name.replace("_", "-")
        if name in _SIM_FLAGS:
            argv.append(option if value else "--no-" + option[2:])
        elif value is not None:
            argv += [option, str(value)]
    return argv


def sim_launch(fields: Mapping[str, Any], log: Path | None = None) -> Launch:
    """A simulator engine on a free port."""
    port = free_port()
    return Launch(sim_command(port, fields), f"http://{HOST}:{port}", log)


def vllm_launch(spec: EngineSpec, log: Path,
                env: Mapping[str, str | None] | None = None) -> Launch:
    """A vLLM OpenAI server as ``EngineSpec`` describes it (the gateway's managed engines
    start the same way); ``env`` changes its environment on top of the spec's."""
    return Launch(spec.command(), spec.url, log, {**spec.environment(), **(env or {})})


class EngineFleet:
    """Engine processes on fixed loopback ports (see the module docstring)."""

    def __init__(self, launches: Sequence[Launch], ready_timeout_s: float) -> None:
        self._launches = list(launches)
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * len(self._launches)
        self._ready_timeout_s = ready_timeout_s

    def __len__(self) -> int:
        return len(self._launches)

    @property
    def urls(self) -> list[str]:
        """Base URLs, in engine order."""
        return [launch.url for launch in self._launches]

    def pid(self, index: int) -> int | None:
        """The process id of engine ``index`` while it runs."""
        process = self._processes[index]
        return None if process is None or process.poll() is not None else process.pid

    def kill(self, index: int) -> None:
        """SIGKILL engine ``index`` (its whole process group), like a crash; returns once
        it is gone. Its in-flight requests break."""
        process = self._processes[index]
        if process is not None:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        self._processes[index] = None

    async def restart(self, index: int) -> None:
        """Start engine ``index`` again on its port (killing it first if it still runs)
        and wait until it is ready."""
        self.kill(index)
        await self._start(index)

    async def start_all(self, *, one_at_a_time: bool = False) -> None:
        """Start every engine and wait until all are ready: all at once, or each after the
        previous one is ready, so each gets the machine to itself and its own ready timeout
        (three vLLM CPU engines on 2 cores: 6 min side by side, 2 min each in turn)."""
        if one_at_a_time:
            for index in range(len(self)):
                await self._start(index)
            return
        for index in range(len(self)):
            self._processes[index] = spawn(self._launches[index])
        for index in range(len(self)):  # they start in parallel; waiting in turn is as fast
            await self._wait_ready(index)

    def stop_all(self) -> None:
        """SIGTERM every engine, then SIGKILL what is left after ``STOP_GRACE_S``."""
        running = [p for p in self._processes if p is not None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            _reap(process, deadline)
        self._processes = [None] * len(self)

    async def _start(self, index: int) -> None:
        self._processes[index] = spawn(self._launches[index])
        await self._wait_ready(index)

    async def _wait_ready(self, index: int) -> None:
        process = self._processes[index]
        assert process is not None
        await wait_ready(self._launches[index], process, self._ready_timeout_s)


@asynccontextmanager
async def engine_fleet(launches: Sequence[Launch], *, ready_timeout_s: float = 30.0,
                       one_at_a_time: bool = False) -> AsyncIterator[EngineFleet]:
    """Start these engines (see ``EngineFleet.start_all``), yield them once all are ready,
    stop them all at the end. ``ready_timeout_s`` is per engine."""
    fleet = EngineFleet(launches, ready_timeout_s)
    try:
        await fleet.start_all(one_at_a_time=one_at_a_time)
        yield fleet
    finally:
        fleet.stop_all()


def sim_fleet(count: int, fields: Mapping[str, Any], *, log_dir: Path | None = None,
              ready_timeout_s: float = 30.0) -> contextlib.AbstractAsyncContextManager[EngineFleet]:
    """``count`` simulator engines with the same ``SimConfig`` fields (logs, when
    ``log_dir`` is given, in ``sim-<i>.log``)."""
    launches = [sim_launch(fields, None if log_dir is None else log_dir / f"sim-{i}.log")
                for i in range(count)]
    return engine_fleet(launches, ready_timeout_s=ready_timeout_s)


@dataclass
class GatewayProcess:
    """A running ``python -m gateway serve --config FILE``."""

    url: str
    process: subprocess.Popen[bytes]
    config: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> ProcStats:
        """Its RSS and CPU time now (from ``/proc``)."""
        return read_stats(self.process.pid)


def gateway_launch(settings: Mapping[str, Any], log_dir: Path, name: str = "gateway") -> Launch:
    """``python -m gateway serve`` with ``settings`` (the keys of its YAML config) written to
    ``<log_dir>/<name>.yaml``; ``host`` and a free ``port`` are filled in when missing."""
    config = {"host": HOST, **settings}
    config.setdefault("port", free_port())
    log_dir.mkdir(parents=True, exist_ok=True)
    config_file = log_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config_file)]
    return Launch(argv, f"http://{config['host']}:{config['port']}", log_dir / f"{name}.log",
                  ready_path="/ready")


@asynccontextmanager
async def gateway_process(settings: Mapping[str, Any], *, log_dir: Path,
                          name: str = "gateway", all_engines: bool = True,
                          ready_timeout_s: float = 60.0) -> AsyncIterator[GatewayProcess]:
    """Start the gateway (see ``gateway_launch``) and yield it once ready: ``/ready`` is 200
    and, with ``all_engines``, reports every engine healthy. SIGTERM at the end (SIGKILL
    after ``STOP_GRACE_S``)."""
    launch = gateway_launch(settings, log_dir, name)
    process = spawn(launch)
    try:
        await wait_ready(launch, process, ready_timeout_s, all_engines=all_engines)
        assert launch.log is not None
        yield GatewayProcess(launch.url, process, Path(launch.argv[-1]), launch.log)
    finally:
        _signal_group(process, signal.SIGTERM)
        _reap(process, time.monotonic() + STOP_GRACE_S)


def spawn(launch: Launch) -> subprocess.Popen[bytes]:
    """Start ``launch`` in its own process group, output to its log (or nowhere)."""
    env = environment(os.environ, launch.env or {})
    out: Any = subprocess.DEVNULL
    if launch.log is not None:
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        out = launch.log.open("ab")
    try:
        return subprocess.Popen(launch.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def environment(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``base`` with ``changes`` applied: a None value removes that variable."""
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


async def wait_ready(launch: Launch, process: subprocess.Popen[bytes], timeout_s: float, *,
                     all_engines: bool = False) -> None:
    """Poll ``launch.url + launch.ready_path`` until it answers 200 (and, with
    ``all_engines``, lists every engine healthy); FleetError if the process exits first
    or ``timeout_s`` passes."""
    url = launch.url + launch.ready_path
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise FleetError(f"{launch.argv[:4]} exited with {process.returncode}"
                                 f"{_tail(launch.log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, allow_redirects=False) as response:
                    body = await response.read()
                    if response.status == 200 and (not all_engines or all_engines_healthy(body)):
                        return
            await asyncio.sleep(0.2)
    raise FleetError(f"{url} not ready after {timeout_s:.0f} s{_tail(launch.log)}")


def all_engines_healthy(ready_body: bytes) -> bool:
    """Whether the gateway's ``/ready`` body reports every engine healthy."""
    engines = json.loads(ready_body).get("engines") or []
    return all(engine.get("healthy") for engine in engines)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _reap(process: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return f" (log {log}):\n" + log.read_text(errors="replace")[-3000:]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
