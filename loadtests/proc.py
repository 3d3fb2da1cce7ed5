"""What a process costs, read from Linux's ``/proc``: resident memory and CPU time.

``read_stats(pid)`` reads ``/proc/PID/status`` (``VmRSS``) and ``/proc/PID/stat`` (``utime``
+ ``stime``); the parsers are pure so they can be tested on captured text. ``PeakRss``
samples a process's RSS in the background while a benchmark runs.
"""

from __future__ import annotations

import asyncio
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStats:
    """A process's resident memory and CPU time (user + system) at one moment."""

    rss_bytes: int
    cpu_s: float


def parse_stat_cpu_ticks(stat: str) -> int:
    """``utime + stime`` in clock ticks from the text of ``/proc/PID/stat``.

    The command name (field 2) is in parentheses and may hold spaces or parentheses, so
    fields are counted after its last ``)``: utime and stime are fields 14 and 15.
    """
    after_name = stat[stat.rindex(")") + 2 :].split()
    # after_name[0] is field 3 (state), so field N is after_name[N - 3].
    return int(after_name[11]) + int(after_name[12])


def parse_status_rss_bytes(status: str) -> int:
    """``VmRSS`` in bytes from the text of ``/proc/PID/status`` (0 if absent: a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmRSS unit: {line!r}")
            return int(value) * 1024
    return 0


def read_stats(pid: int) -> ProcStats:
    """The current RSS and CPU time of process ``pid`` (OSError if it is gone)."""
    base = Path("/proc") / str(pid)
    rss = parse_status_rss_bytes((base / "status").read_text())
    ticks = parse_stat_cpu_ticks((base / "stat").read_text())
    return ProcStats(rss, ticks / CLOCK_TICKS)


def self_cpu_s() -> float:
    """CPU time (user + system) of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (children inherit it);
    returns the new limit. Thousands of streams need thousands of sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class PeakRss:
    """Samples the RSS of ``pid`` every ``interval_s`` while the ``async with`` block runs.

    ``peak_bytes`` is the largest sample (taken at entry, at exit and in between).
    """

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one sample now (a vanished process is ignored)."""
        try:
            rss = parse_status_rss_bytes((Path("/proc") / str(self.pid) / "status").read_text())
        except OSError:
            return
        self.peak_bytes = max(self.peak_bytes, rss)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()
