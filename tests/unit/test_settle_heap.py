"""A gateway in a process of its own freezes its start-up heap and collects young garbage
less often (``gateway.edge.server.settle_heap``); in-process test servers leave the
collector alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.edge.server import GC_YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parents[2]


def test_the_start_up_heap_is_frozen_and_young_collections_made_rarer() -> None:
    probe = ("import gc; from gateway.edge.server import settle_heap; settle_heap(); "
             "print(gc.get_freeze_count() > 10000, gc.get_threshold()[0])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", str(GC_YOUNG_THRESHOLD)]
