"""What the discovery and reload tests share: a ``sluice serve`` process whose config file
the test rewrites, and continuous streaming load that records every failure."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.launch import free_port
from tests.integration.helpers import events_of, wait_until

STREAM = {"model": "sim-model", "stream": True, "max_tokens": 8,
          "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class Gateway:
    """A gateway process serving ``config`` (rewrite it, then :meth:`hangup`)."""

    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    url: str

    def write(self, settings: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(settings))

    def hangup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    async def reloads(self, outcome: str) -> int:
        async with httpx.AsyncClient(timeout=5) as http:
            page = (await http.get(self.url + "/metrics")).text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in page.splitlines()
                   if line.startswith(f'sluice_config_reloads_total{{outcome="{outcome}"}}'))


async def start_gateway(tmp_path: Path, settings: dict[str, Any]) -> Gateway:
    """``sluice serve`` on a free port with ``settings`` (+ port, no default engine, no
    access log), ready (/ready 200) before it returns."""
    port = free_port()
    config, log = tmp_path / "sluice.yaml", tmp_path / "gateway.log"
    base = {"port": port, "default_engine": False, "access_log": False}
    config.write_text(yaml.safe_dump({**base, **settings}))
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - Popen so teardown can kill it
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT)
    gateway = Gateway(config, log, process, f"http://127.0.0.1:{port}")

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(gateway.url + "/ready")).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    await wait_until(ready, "the gateway to be ready", timeout_s=30)
    assert process.poll() is None, f"the gateway exited:\n{gateway.logged()[-3000:]}"
    return gateway


def stop(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.kill()
        gateway.process.wait(timeout=10)


@dataclass
class Load:
    """Streams sent back to back by ``concurrency`` clients until :meth:`stop`; each must
    be a 200 whose events end with ``[DONE]`` and carry no error."""

    url: str
    concurrency: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    done: int = 0
    failures: list[str] = field(default_factory=list)
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]
        return self

    async def stop(self) -> None:
        self._stopping = True
        async with asyncio.timeout(30):
            await asyncio.gather(*self._tasks)

    async def wait_for(self, more: int) -> None:
        """Until ``more`` more streams have ended."""
        target = self.done + more
        await wait_until(self._reached(target), f"{more} more streams")

    def _reached(self, target: int) -> Any:
        async def check() -> bool:
            return self.done >= target or bool(self.failures)
        return check

    async def _client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30,
                                     headers=self.headers) as http:
            while not self._stopping:
                try:
                    async with http.stream("POST", "/v1/chat/completions",
                                           json=STREAM) as response:
                        body = await response.aread()
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                events = events_of(body)
                if response.status_code != 200 or not events or \
                        events[-1] != "data: [DONE]" or any('"error"' in e for e in events):
                    self.failures.append(f"{response.status_code}: {body[-300:]!r}")
                self.done += 1
