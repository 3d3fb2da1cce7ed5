"""A real ``redis-server`` for tests: its own process, port and directory; no persistence
unless asked for (then every write is in its append-only file before it is answered)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from loadtests.launch import free_port


class RedisServer:
    """``start()`` and ``kill()`` as often as a test likes; the port stays the same, so
    a gateway pointed at :attr:`url` sees an outage and a recovery. With ``persist``
    the data outlives a kill, as a production Redis's does."""

    def __init__(self, directory: Path, port: int | None = None, *,
                 persist: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._pong():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {self.port} did not answer in time")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop it as a crash would (SIGKILL): in-memory data is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
