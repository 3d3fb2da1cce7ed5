"""The engine supervisor with small stand-in engine commands: restart after a crash with
exponential backoff; stop with SIGTERM to the process group, SIGKILL after the grace period.

Waits are bounded and event-driven; the only time checks are lower bounds (a restart never
comes before its backoff), which load on the machine cannot break.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.checkpoint import UnservableCheckpoint
from engines.spec import EngineSpec
from engines.supervisor import EngineProcess
from tests.integration.helpers import wait_until


class ScriptSpec(EngineSpec):
    """An engine whose command is a Python snippet instead of vLLM."""

    script: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def spec(script: str) -> ScriptSpec:
    return ScriptSpec(model=Path("unused"), served_name="fake", script=script)


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def pids_to_reap() -> Iterator[list[int]]:
    """Pids a test's stand-in engines report; whatever still runs at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def words(path: Path) -> list[str]:
    """The whitespace-separated words of a small file a stand-in engine writes."""
    return path.read_text().split() if path.exists() else []


async def read_pids(path: Path, count: int) -> list[int]:
    async def written() -> bool:
        return len(words(path)) >= count
    await wait_until(written, f"{path.name} to be written")
    return [int(p) for p in words(path)[:count]]


async def test_crashed_engine_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    crash_at_once = (
        "import os, sys, time\n"
        f"with open({str(starts)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()} {time.monotonic()}\\n')\n"
        "print('engine starting, then crashing', flush=True)\n"
        "sys.exit(3)\n")
    engine = EngineProcess("fake", spec(crash_at_once), tmp_path / "engine.log",
                           backoff_initial_s=0.15, backoff_max_s=0.6)
    await engine.start()
    try:
        async def five_starts() -> bool:
            return len(words(starts)) >= 10
        await wait_until(five_starts, "five starts of the crashing engine")
    finally:
        await engine.stop()
    started = words(starts)
    pids, times = [int(p) for p in started[::2]], [float(t) for t in started[1::2]]
    assert len(set(pids)) == len(pids) >= 5  # a new process every time
    assert engine.restarts >= 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each restart waits its backoff first: 0.15, then doubling up to the 0.6 s cap.
    for gap, backoff in zip(gaps, [0.15, 0.3, 0.6, 0.6], strict=False):
        assert gap >= backoff * 0.95, (gaps, "restarted before its backoff")
    log = (tmp_path / "engine.log").read_text()
    assert log.count("engine starting, then crashing") >= 5  # every run's output, appended


async def test_stop_terminates_the_whole_process_group(tmp_path: Path,
                                                       pids_to_reap: list[int]) -> None:
    pid_file, stopped = tmp_path / "pids", tmp_path / "stopped"
    polite = (
        "import os, signal, subprocess, sys, time\n"
        "def on_term(signum, frame):\n"
        f"    open({str(stopped)!r}, 'w').write('SIGTERM')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n")
    engine = EngineProcess("fake", spec(polite), tmp_path / "engine.log", stop_timeout_s=30)
    await engine.start()
    pids_to_reap += await read_pids(pid_file, 2)
    async with asyncio.timeout(20):
        await engine.stop()
    assert stopped.read_text() == "SIGTERM"  # asked to stop, not killed
    await wait_until(lambda: _gone(pids_to_reap), "the engine and its child to be gone")
    assert engine.restarts == 0  # a stop is not a crash


async def test_stop_kills_an_engine_that_ignores_sigterm(tmp_path: Path,
                                                        pids_to_reap: list[int]) -> None:
    pid_file = tmp_path / "pids"
    stubborn = (
        "import os, signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n")
    engine = EngineProcess("fake", spec(stubborn), tmp_path / "engine.log",
                           stop_timeout_s=0.3)
    await engine.start()
    pids_to_reap += await read_pids(pid_file, 2)
    async with asyncio.timeout(20):
        await engine.stop()
    await wait_until(lambda: _gone(pids_to_reap), "the engine and its child to be killed")
    assert engine.restarts == 0


async def _gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def _w4a16_checkpoint(directory: Path) -> Path:
    groups = {"group_0": {"targets": ["Linear"], "input_activations": None,
                          "weights": {"num_bits": 4, "type": "int", "group_size": 64}}}
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "config_groups": groups}}))
    return directory


AVX2_FLAGS = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"


@pytest.mark.parametrize(("device", "cpuinfo", "starts"), [
    ("cpu", AVX2_FLAGS, False),
    ("cpu", AVX2_FLAGS.replace("fma", "fma avx512f"), True),
    ("gpu", AVX2_FLAGS, True),
], ids=["cpu-avx2-refused", "cpu-avx512-started", "gpu-not-checked"])
async def test_a_w4a16_checkpoint_starts_only_where_the_cpu_has_avx512f(
        tmp_path: Path, device: str, cpuinfo: str, starts: bool) -> None:
    started = tmp_path / "started"
    script = f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\n" \
             "time.sleep(60)\n"
    model = _w4a16_checkpoint(tmp_path / "w4a16")
    engine = EngineProcess("w4", ScriptSpec(model=model, served_name="w4", device=device,
                                            dtype="bfloat16", script=script),
                           tmp_path / "engine.log", cpuinfo=lambda: cpuinfo)
    if not starts:
        with pytest.raises(UnservableCheckpoint, match="lacks avx512f"):
            await engine.start()
        assert engine.pid is None  # nothing was started
        assert words(started) == []
        return
    await engine.start()
    try:
        assert await read_pids(started, 1) == [engine.pid]
    finally:
        await engine.stop()
