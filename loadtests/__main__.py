"""``python -m loadtests`` is ``sluice-bench`` (and ``sluice bench``)."""

from loadtests.cli import main

main()
