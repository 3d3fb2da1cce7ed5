"""``python -m loadtests`` is ``sluice bench``."""

from loadtests.cli import app

app()
