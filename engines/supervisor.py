"""Runs managed engine processes: start, restart after a crash with backoff, clean stop.

Each engine runs in its own process group so that stopping it also stops the
processes vLLM spawns (its engine core). On Linux the engine also gets SIGTERM if the
gateway dies without stopping it, so no engine outlives its gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from engines.checkpoint import Quantization, check_servable, read_cpuinfo
from engines.lifetime import die_with_parent
from engines.spec import EngineSpec

log = logging.getLogger("sluice.supervisor")


def preflight(spec: EngineSpec, cpuinfo: str) -> Quantization | None:
    """The checkpoint's quantization; :class:`~engines.checkpoint.UnservableCheckpoint`,
    naming the missing feature, when a CPU engine's checkpoint needs a CPU feature that
    ``cpuinfo`` lacks (W4A16 without ``avx512f``) or another ``dtype`` (W4A16 in float32),
    where vLLM would crash while loading."""
    spec = spec.resolved()
    if spec.device != "cpu":
        return None
    return check_servable(spec.model, cpuinfo, spec.dtype or "float32")


_SECRET_FLAGS = frozenset({"--api-key"})


def redacted(argv: list[str]) -> list[str]:
    """``argv`` for a log line: the value of a secret flag (``extra_args`` may hold
    ``--api-key K`` or ``--api-key=K``) replaced."""
    out: list[str] = []
    hide = False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if hide:
            out.append("[redacted]")
        elif eq and flag in _SECRET_FLAGS:
            out.append(f"{flag}=[redacted]")
        else:
            out.append(arg)
        hide = not hide and not eq and arg in _SECRET_FLAGS
    return out


class EngineProcess:
    """One managed engine process, kept running until :meth:`stop`.

    ``cpuinfo`` returns ``/proc/cpuinfo`` text (default: this host's; tests pass another
    CPU's)."""

    def __init__(self, name: str, spec: EngineSpec, log_path: Path, *,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0,
                 stop_timeout_s: float = 20.0,
                 cpuinfo: Callable[[], str] | None = None,
                 api_key: SecretStr | None = None) -> None:
        self.name = name
        self._api_key = api_key
        self.spec = spec
        self.log_path = log_path
        self.restarts = 0
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._stop_timeout = stop_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._cpuinfo = cpuinfo or read_cpuinfo

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        """Start the process and a watcher that restarts it if it exits.

        A CPU engine whose checkpoint this CPU cannot serve is not started (see
        :func:`preflight`)."""
        if self.spec.device == "auto":
            self.spec = await asyncio.to_thread(self.spec.resolved)
            log.info("engine %s: device %s (auto: the vLLM build in %s)", self.name,
                     self.spec.device, self.spec.python)
        self.spec = self.spec.resolved()
        quantization = preflight(self.spec, self._cpuinfo())
        if quantization is not None:
            log.info("engine %s: a %s checkpoint (%s)", self.name, quantization.scheme,
                     quantization.method)
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name=f"engine-{self.name}")

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.spec.command()
        log.info("starting engine %s: %s (log: %s)", self.name, " ".join(redacted(argv)),
                 self.log_path)
        with self.log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *argv, env=self.process_environment(),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )

    def process_environment(self) -> dict[str, str]:
        """The engine's whole environment: the gateway's, the spec's, and its API key as
        ``VLLM_API_KEY`` (vLLM's ``--api-key`` from the environment: not on the command
        line, which any local user can read in /proc)."""
        env = {**os.environ, **self.spec.environment()}
        if self._api_key is not None:
            env["VLLM_API_KEY"] = self._api_key.get_secret_value()
        return env

    async def _watch(self) -> None:
        backoff = self._backoff_initial
        while not self._stopping:
            assert self._process is not None
            began = time.monotonic()
            code = await self._process.wait()
            if self._stopping:
                return
            if time.monotonic() - began > 60:
                backoff = self._backoff_initial
            log.error("engine %s exited with %s; restarting in %.0f s (log: %s)",
                      self.name, code, backoff, self.log_path)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
            if not self._stopping:
                self.restarts += 1
                await self._spawn()

    async def stop(self) -> None:
        """SIGTERM the engine's process group; SIGKILL it if it has not exited in time."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._signal(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._stop_timeout)
        except TimeoutError:
            log.warning("engine %s did not stop in %.0f s; killing it", self.name,
                        self._stop_timeout)
            self._signal(process.pid, signal.SIGKILL)
            await process.wait()
        log.info("engine %s stopped", self.name)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
