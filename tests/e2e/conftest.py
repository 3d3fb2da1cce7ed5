"""End-to-end tests: ``sluice serve`` with a real vLLM CPU engine, as ``make run`` starts it.

Their ``stack`` fixture is in ``tests/conftest.py``, shared with the browser tests so that
one session starts one engine. Without the engine virtualenv and the default model these
tests are skipped locally and fail in CI.
"""

from __future__ import annotations

from tests.conftest import TEST_LORA

__all__ = ["TEST_LORA"]
