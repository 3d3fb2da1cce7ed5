"""``python -m simulator`` is ``sluice-sim``."""

from simulator.cli import app

app(prog_name="sluice-sim")
