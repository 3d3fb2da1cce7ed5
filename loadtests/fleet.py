"""Engine fleets and gateways as real processes, for benchmarks that need several of them.

    async with sim_fleet(4, {"decode_step_ms": 12, "kv_capacity_tokens": 32768},
                         log_dir=out / "logs") as fleet:
        async with gateway_process(gateway_settings(fleet.urls), log_dir=out / "logs") as gw:
            ...                      # gw.url, gw.pid, gw.stats() (RSS, CPU time)
            fleet.kill(2)            # SIGKILL engine 2, as a crash
            await fleet.restart(2)   # start it again on the same port, wait for /health

Processes start and stop through ``loadtests.launch`` (own process group, SIGTERM if this
process dies first); every one is stopped when its ``async with`` block ends, however it
ends. Engine ``i`` keeps its port across restarts.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engines.spec import EngineSpec
from loadtests.launch import (
    HOST,
    NO_DRAIN_DELAY,
    Launch,
    free_port,
    kill,
    launched,
    spawn,
    stop_all,
    wait_ready,
)
from loadtests.proc import ProcStats, read_stats
from simulator.config import SimConfig

_SIM_FLAGS = frozenset({"prefix_caching", "hang"})
"""Boolean SimConfig fields, spelled ``--name/--no-name`` on the simulator's command line."""


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
            kill(process)
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
        """SIGTERM every engine, then SIGKILL what is left after the grace period."""
        stop_all([p for p in self._processes if p is not None])
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


def gateway_launch(settings: Mapping[str, Any], log_dir: Path, name: str = "gateway", *,
                   root: Path | None = None) -> Launch:
    """``python -m gateway serve`` with ``settings`` (the keys of its YAML config) written to
    ``<log_dir>/<name>.yaml``; ``host`` and a free ``port`` are filled in when missing.
    The response cache is off unless ``settings`` turn it on: the benches measure relaying
    and routing, and their workloads send temperature-0 requests, repeats included.
    ``root``: the gateway of another checkout (e.g. a ``git worktree`` of an earlier
    commit), run by this one's harness, against the same engines."""
    # (a checkout from before the response cache has no cache settings)
    cached = root is None or (root / "gateway" / "cache").is_dir()
    config = {"host": HOST, **({"cache": {"enabled": False}} if cached else {}), **settings}
    config.setdefault("port", free_port())
    log_dir.mkdir(parents=True, exist_ok=True)
    config_file = log_dir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    # -P: the working directory (this checkout) does not go ahead of PYTHONPATH's.
    argv = [sys.executable, *([] if root is None else ["-P"]), "-m", "gateway", "serve",
            "--config", str(config_file)]
    return Launch(argv, f"http://{config['host']}:{config['port']}", log_dir / f"{name}.log",
                  {**NO_DRAIN_DELAY, **({} if root is None else {"PYTHONPATH": str(root)})},
                  ready_path="/ready")


@asynccontextmanager
async def gateway_process(settings: Mapping[str, Any], *, log_dir: Path,
                          name: str = "gateway", all_engines: bool = True,
                          ready_timeout_s: float = 60.0,
                          root: Path | None = None) -> AsyncIterator[GatewayProcess]:
    """Start the gateway (see ``gateway_launch``) and yield it once ready: ``/ready`` is 200
    and, with ``all_engines``, reports every engine healthy. Stopped at the end
    (``loadtests.launch.stop``)."""
    launch = gateway_launch(settings, log_dir, name, root=root)
    async with launched(launch, ready_timeout_s=ready_timeout_s,
                        all_engines=all_engines) as process:
        assert launch.log is not None
        yield GatewayProcess(launch.url, process, Path(launch.argv[-1]), launch.log)
