"""``python -m loadtests`` is ``sluice-bench`` (and ``sluice bench``)."""

from loadtests.cli import app

app(prog_name="sluice-bench")
