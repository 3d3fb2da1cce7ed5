"""Several gateway processes on one port: a parent that supervises ``workers`` children.

The parent starts the managed engines (once, whatever the number of workers), reserves
the port and starts each worker as ``python -m gateway.cli.workers`` with its settings on
stdin, every engine given as a plain URL (and the config file and command-line
overrides as arguments, to read again on SIGHUP). Each worker binds its own listening socket
with ``SO_REUSEPORT``, so the kernel spreads new connections across them, and runs the
ordinary single-process server (:class:`~gateway.edge.server.GatewayServer`), drain included.

On SIGHUP the parent sends SIGHUP to every worker: each reads the configuration file
(and the environment) again itself and applies it (:mod:`gateway.pipeline.reload`).
On SIGTERM or SIGINT the parent sends the same signal to every worker, so each follows
the single process's timeline (:mod:`gateway.edge.server`: on SIGTERM ``/ready`` answers
503 for ``drain.delay_s`` while it still serves, then the drain; SIGINT skips the delay),
a second signal too (a second Ctrl-C quits at once); it waits for them all, then stops
the engines. Workers run in a process group of their own, so a Ctrl-C on the terminal
reaches them once, through the parent. A worker that dies on its own stops the whole server: an
orchestrator restarts it whole rather than running with fewer workers than asked.
Each worker counts its own metrics; the one that takes a ``/metrics`` scrape asks the
others for theirs over Unix sockets in a private directory the parent makes, and answers
them merged (see :mod:`gateway.observability.worker_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvloop

from engines.lifetime import die_with_parent
from engines.supervisor import EngineProcess
from gateway.app import create_app
from gateway.config.settings import Settings, load_settings
from gateway.edge.server import BACKSTOP_S, GatewayServer
from gateway.observability.logs import configure_logging
from gateway.observability.worker_metrics import WorkerPeers
from gateway.pipeline.reload import Loader

log = logging.getLogger("sluice.workers")

ReloadFrom = tuple[Path | None, dict[str, Any]]
"""The config file and the command-line overrides the settings came from."""

_WORKER = ("import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}); "
           "import runpy; runpy.run_module('gateway.cli.workers', run_name='__main__')")
"""A worker's command: SIGHUP blocked first thing (the parent forwards it from the
start, and its default is to exit) until the worker's server can reload; then the
module's main."""

_STOP_MARGIN_S = 10.0
"""How much longer than a worker's own drain the parent waits before SIGKILL."""


def _worker_preexec() -> None:
    """In a worker before it runs: die with the parent, in a process group of its own."""
    die_with_parent()
    os.setpgid(0, 0)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (not yet listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


class Supervisor:
    """The parent: managed engines, the port, and the worker processes."""

    def __init__(self, settings: Settings,
                 announce: Callable[[Settings], Coroutine[Any, Any, None]] | None = None,
                 reload_from: ReloadFrom = (None, {})) -> None:
        self.settings = settings
        self._reload_from = reload_from
        self._announce = announce
        self.port = settings.port
        """The port workers listen on (resolved when ``settings.port`` is 0)."""
        self.signal: int | None = None
        """The signal that stopped the server, if one did."""
        self.failed = False
        """A worker exited on its own."""
        self._workers: list[asyncio.subprocess.Process] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Serve until a signal (or a worker's death), then drain and stop everything."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hangup)
        async with AsyncExitStack() as stack:
            for config in self.settings.resolved_engines():
                if config.managed is not None:
                    process = EngineProcess(config.name, config.managed,
                                            self.settings.log_dir / f"engine-{config.name}.log")
                    await process.start()
                    stack.push_async_callback(process.stop)
            reservation = stack.enter_context(reuseport_socket(self.settings.host, self.port))
            self.port = reservation.getsockname()[1]
            metrics_dir = tempfile.mkdtemp(prefix="sluice-metrics-")  # mode 0700
            stack.callback(shutil.rmtree, metrics_dir, ignore_errors=True)
            settings = self.settings.for_worker(self.port)
            for index in range(self.settings.workers):
                config_json = json.dumps({
                    "settings": settings, "index": index, "workers": self.settings.workers,
                    "metrics_dir": metrics_dir}).encode()
                self._workers.append(await self._spawn(index, config_json))
            if self._announce is not None:
                announcer = asyncio.create_task(
                    self._announce(self.settings.model_copy(update={"port": self.port})))
                stack.callback(announcer.cancel)
            waits = [asyncio.create_task(w.wait()) for w in self._workers]
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait([*waits, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not stopped.done():
                self.failed = True
                log.error("a worker exited on its own (codes %s); stopping the gateway",
                          [w.returncode for w in self._workers])
            stopped.cancel()
            await self._stop_workers(waits)

    def _forward_hangup(self) -> None:
        log.info("SIGHUP: asking %d workers to reload the configuration", len(self._workers))
        for worker in self._workers:
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGHUP)

    def _on_signal(self, sig: int) -> None:
        if self.signal is None:
            self.signal = sig
            self._stop.set()
        else:  # a second signal: passed on (SIGTERM ends the delay, SIGINT quits)
            self._send(sig)

    def _send(self, sig: int) -> None:
        for worker in self._workers:
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(sig)

    async def _spawn(self, index: int, config_json: bytes) -> asyncio.subprocess.Process:
        config, overrides = self._reload_from
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, "" if config is None else str(config),
            json.dumps(overrides), stdin=asyncio.subprocess.PIPE,
            preexec_fn=_worker_preexec)
        assert process.stdin is not None
        process.stdin.write(config_json)
        await process.stdin.drain()
        process.stdin.close()
        log.info("worker %d started (pid %d) on port %d", index, process.pid, self.port)
        return process

    async def _stop_workers(self, waits: list[asyncio.Task[int]]) -> None:
        self._send(self.signal or signal.SIGTERM)
        drain = self.settings.drain
        deadline = drain.delay_s + drain.timeout_s + BACKSTOP_S + _STOP_MARGIN_S
        _, late = await asyncio.wait(waits, timeout=deadline)
        for worker in self._workers:
            if worker.returncode is None:
                log.warning("worker %d did not stop in %.0f s; killing it", worker.pid,
                            deadline)
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
        if late:
            await asyncio.wait(late)


def serve_workers(settings: Settings,
                  announce: Callable[[Settings], Coroutine[Any, Any, None]] | None = None,
                  reload_from: ReloadFrom = (None, {})) -> tuple[int | None, bool]:
    """Run a :class:`Supervisor` to its end (``announce(settings)`` runs alongside once
    the workers are started): the signal that stopped it, and whether a worker failed.
    ``reload_from``: the config file and overrides the settings were loaded with."""
    supervisor = Supervisor(settings, announce, reload_from)
    uvloop.run(supervisor.run())
    return supervisor.signal, supervisor.failed


async def _serve_one(settings: Settings, load: Loader, index: int, workers: int,
                     metrics_dir: Path) -> None:
    sock = reuseport_socket(settings.host, settings.port)
    app = create_app(settings)
    peers = app.metrics.peers = WorkerPeers(app.metrics, metrics_dir, index, workers)
    await peers.start()
    try:
        server = GatewayServer(app, settings, own_process=True, reload=load)
        await server.serve(sockets=[sock])
    finally:
        await peers.close()


def main() -> None:
    """One worker: its settings, index, the number of workers and the metrics directory
    (JSON) on stdin, the config file and the overrides (JSON) as arguments; serves until
    SIGTERM, like ``sluice serve``, and reloads on SIGHUP."""
    given = json.loads(sys.stdin.buffer.read())
    settings = Settings(**given["settings"])
    config = Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}

    def load() -> Settings:  # as the parent would give it, on this worker's port
        return Settings(**load_settings(config, **overrides).for_worker(settings.port))

    configure_logging(settings.log_level, settings.log_format)
    uvloop.run(_serve_one(settings, load, given["index"], given["workers"],
                          Path(given["metrics_dir"])))


if __name__ == "__main__":
    main()
