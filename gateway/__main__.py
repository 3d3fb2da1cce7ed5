"""``python -m gateway`` is the ``sluice`` command."""

from gateway.cli import app

app()
