"""Serving a simulator app on a TCP port: in-process for tests, or as the CLI's process."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType
from typing import Self

from aiohttp import web

from simulator.config import SimConfig
from simulator.server import create_sim_app

logger = logging.getLogger("simulator")

BACKLOG = 2048
"""The listen queue, as vLLM's server (uvicorn's default) has it. aiohttp's own default,
128, is half the 250 connections each of four engines gets when 1,000 streams start
together (the scale benchmark), so a simulator busy for a moment dropped SYNs (retried
by the kernel 1 s later) where vLLM would not."""


class SimServer:
    """One simulator listening on `host:port` (port 0 picks a free one).

    Use as `async with SimServer(config) as server:` and talk to `server.base_url`.
    With `exit_on_crash=False` (the default here) reaching `crash_after_tokens` does not
    kill the process: the listener and every connection close, which is what a client
    sees when an engine process dies, and the process (a test run) goes on.
    """

    def __init__(
        self,
        config: SimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        exit_on_crash: bool = False,
        access_log: bool = False,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.config = config
        self.app = create_sim_app(config, on_crash=None if exit_on_crash else self._crash)
        self._host = host
        self._port = port
        self._runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=logger if access_log else None,
            shutdown_timeout=shutdown_timeout,
        )
        self._site: web.TCPSite | None = None
        self._crash_task: asyncio.Task[None] | None = None
        self.port = port
        self.crashed = False

    @property
    def base_url(self) -> str:
        """`http://host:port` of the running server."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (the engine loop starts with the app)."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, backlog=BACKLOG)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving, abort what is in flight and stop the engine loop."""
        if self._crash_task is not None:
            await self._crash_task
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _crash(self) -> None:
        self.crashed = True
        if self._site is not None:
            self._crash_task = asyncio.get_running_loop().create_task(self._site.stop())
        server = self._runner.server
        for connection in server.connections if server is not None else ():
            if connection.transport is not None:
                connection.transport.close()  # like a dead process: flush what was sent, FIN


async def serve(config: SimConfig, host: str, port: int, *, access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM or cancellation (the CLI's main); logs one line when ready."""
    server = SimServer(config, host, port, exit_on_crash=True, access_log=access_log)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info(
        "simulator ready: model=%s listening on %s (decode_step_ms=%s, max_num_seqs=%d)",
        config.model,
        server.base_url,
        config.decode_step_ms,
        config.max_num_seqs,
    )
    try:
        await stop.wait()
        logger.info("simulator stopping")
    finally:
        await server.close()
