"""A real Redis replica set under Sentinel for tests: one primary, one replica and three
``redis-sentinel`` processes (quorum 2), each on its own free port and in the test's
directory, with short failure detection (``down_after_ms``) so that a failover takes
seconds. :attr:`SentinelSet.url` is the gateway's ``redis+sentinel://`` URL."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from loadtests.launch import free_port

SERVICE = "sluice"


class SentinelSet:
    """``start()``, then :meth:`kill_primary` as a crash would, :meth:`wait_promoted`
    for the sentinels to name the replica, ``stop()`` at the end."""

    def __init__(self, directory: Path, *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, service: str = SERVICE) -> None:
        self.directory = directory
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        for binary in ("redis-server", "redis-sentinel"):
            if shutil.which(binary) is None:
                raise FileNotFoundError(f"{binary} is not installed")
        primary, replica = self.data_ports
        self._data_node(primary)
        self._data_node(replica, "--replicaof", "127.0.0.1", str(primary))
        self._until(lambda: self._client(replica).info("replication").get(
            "master_link_status") == "up", "the replica to sync", timeout_s)
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n")
            self._spawn(port, [shutil.which("redis-sentinel") or "", str(config)])
        self._until(self._sentinels_agree, "the sentinels to see each other and the replica",
                    timeout_s)

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                address = self._client(port).sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its port."""
        port = self.primary_port()
        assert port is not None
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)
        return port

    def wait_promoted(self, old: int, timeout_s: float = 30.0) -> int:
        """Wait until the sentinels name another primary and it accepts writes; its
        port."""
        def promoted() -> bool:
            port = self.primary_port()
            return port not in (None, old) and \
                self._client(port or 0).info("replication").get("role") == "master"
        self._until(promoted, "a replica to be promoted", timeout_s, interval_s=0.02)
        port = self.primary_port()
        assert port is not None
        return port

    def replicate(self, timeout_ms: int = 5000) -> int:
        """``WAIT 1``: block until the replica acknowledged every write so far; how many
        replicas did."""
        port = self.primary_port()
        assert port is not None
        return int(self._client(port).execute_command("WAIT", 1, timeout_ms))

    def client(self) -> redis.Redis:
        """A plain client of the current primary."""
        port = self.primary_port()
        assert port is not None
        return self._client(port)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()

    def _data_node(self, port: int, *args: str) -> None:
        self._spawn(port, [shutil.which("redis-server") or "", "--port", str(port),
                           "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", str(self.directory), *args])
        self._until(lambda: bool(self._client(port).ping()), f"redis-server on {port}", 10)

    def _spawn(self, port: int, argv: list[str]) -> None:
        log = (self.directory / f"redis-{port}.log").open("wb")
        with log:
            self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state = self._client(port).sentinel_master(self.service)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1,
                           decode_responses=True)

    def _until(self, ready: object, what: str, timeout_s: float,
               interval_s: float = 0.05) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            for port, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"redis process on {port} exited: see "
                                       f"{self.directory}/redis-{port}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s for {what}")
            time.sleep(interval_s)
