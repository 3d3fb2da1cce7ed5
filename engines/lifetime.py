"""Child processes that do not outlive the process that started them.

Managed engines, gateway workers and the processes a benchmark starts are all given
:func:`die_with_parent` as their ``preexec_fn``: if the parent dies without stopping
them (SIGKILL, a crash), the kernel sends each child SIGTERM, so no engine is left
holding its port and memory.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux; elsewhere nothing).
    Runs in the child between fork and exec."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
