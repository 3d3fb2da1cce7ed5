"""``python -m gateway`` is the ``sluice`` command."""

from gateway.cli.main import app

app()
