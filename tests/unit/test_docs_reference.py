"""The generated reference pages (configuration, metrics) match the code."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.docs_reference import CONFIGURATION, METRICS, ROOT, configuration_page, metrics_page


@pytest.mark.parametrize(("page", "generate"), [(CONFIGURATION, configuration_page),
                                                (METRICS, metrics_page)],
                         ids=["configuration", "metrics"])
def test_the_committed_reference_page_is_what_the_code_generates(
        page: Path, generate: Callable[[], str]) -> None:
    committed, generated = page.read_text(), generate()
    if committed != generated:
        diff = difflib.unified_diff(committed.splitlines(), generated.splitlines(),
                                    "committed", "generated", n=0, lineterm="")
        pytest.fail(f"{page.relative_to(ROOT)} is not what the code generates now (a "
                    "setting or a metric changed): run `make docs-reference` and commit "
                    "the result. First differences:\n" + "\n".join(list(diff)[:20]),
                    pytrace=False)


def test_every_settings_key_and_metric_is_on_its_page() -> None:
    from gateway.config.settings import Settings
    from gateway.observability.metrics import GatewayMetrics

    configuration = configuration_page()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in configuration
    assert "| `timeouts.first_token_s` |" in configuration
    assert "| `versions.aliases.<alias>.versions.<version>.adapter` |" in configuration
    metrics = metrics_page()
    for family in GatewayMetrics().registry.collect():
        assert f"`{family.name}" in metrics
