"""The bench extra: a plain install's `sluice bench` names the extra it lacks in one line;
with `sluice[bench]` the harness runs. A fresh virtualenv and the wheel of this checkout
(about 45 s: the wheel, then pip from its configured indexes or cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "engines", "simulator", "adapters", "loadtests")
MESSAGE = "sluice bench needs the bench extra: pip install 'sluice[bench]'"


def _run(*argv: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"  # rich's help: no option name cut at a narrow terminal
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _wheel(tmp_path: Path) -> Path:
    """The wheel of this checkout, built from a copy (the checkout stays clean)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                 tmp_path / "dist", source, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("sluice-*.whl")
    return wheel


def test_plain_install_names_the_extra_and_the_extra_runs_the_bench(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    venv = tmp_path / "venv"
    made = _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    plain = _run(bin_dir / "pip", "install", "-q", wheel, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    for command in ([bin_dir / "sluice-bench", "--help"],
                    [bin_dir / "sluice", "bench", "run", "--help"]):
        answer = _run(*command, cwd=tmp_path)
        assert answer.returncode == 2, answer
        assert answer.stdout == ""
        lines = answer.stderr.splitlines()
        assert len(lines) == 1, answer.stderr
        assert lines[0].startswith(MESSAGE)
        assert "numpy" in lines[0]

    extra = _run(bin_dir / "pip", "install", "-q", f"{wheel}[bench]", cwd=tmp_path)
    assert extra.returncode == 0, extra.stderr
    helped = _run(bin_dir / "sluice", "bench", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout
    assert "compare" in helped.stdout
    options = _run(bin_dir / "sluice-bench", "run", "--help", cwd=tmp_path)
    assert options.returncode == 0, options.stderr
    assert "--api-key" in options.stdout
    assert "--allow-remote" in options.stdout
    # Every module a bench run loads imports from the installed package alone.
    imported = _run(bin_dir / "python", "-c", "import loadtests.runner, loadtests.metrics, "
                    "loadtests.plots, loadtests.report, loadtests.stack, loadtests; "
                    "print(loadtests.__file__)", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(venv))
