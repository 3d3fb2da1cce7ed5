"""loadtests.proc: /proc parsers and readers."""

from __future__ import annotations

import os

import pytest

from loadtests.proc import (
    CLOCK_TICKS,
    parse_stat_cpu_ticks,
    parse_status_rss_bytes,
    read_stats,
    self_cpu_s,
)

# A real /proc/PID/stat line with a command name holding a space and a parenthesis.
STAT = ("4242 (python (x) y) S 1 4242 4242 0 -1 4194560 12345 0 0 0 "
        "250 75 0 0 20 0 3 0 1000 123456789 5000 18446744073709551615 1 1 0 0 0 0 0 "
        "16781312 16386 0 0 0 17 1 0 0 0 0 0")

STATUS = """Name:\tpython
State:\tS (sleeping)
VmPeak:\t  300000 kB
VmRSS:\t   61440 kB
Threads:\t3
"""


def test_stat_cpu_ticks_are_utime_plus_stime_after_the_command_name() -> None:
    assert parse_stat_cpu_ticks(STAT) == 250 + 75


def test_status_rss_is_vmrss_in_bytes() -> None:
    assert parse_status_rss_bytes(STATUS) == 61440 * 1024


def test_status_without_rss_reads_zero() -> None:
    assert parse_status_rss_bytes("Name:\tzombie\nState:\tZ (zombie)\n") == 0


def test_status_in_an_unexpected_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unit"):
        parse_status_rss_bytes("VmRSS:\t 12 MB\n")


def test_read_stats_of_this_process() -> None:
    stats = read_stats(os.getpid())
    assert stats.rss_bytes > 10 * 1024 * 1024
    assert 0 < stats.cpu_s <= self_cpu_s() + 1 / CLOCK_TICKS
