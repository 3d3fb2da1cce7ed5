"""The pure parts of ``sluice versions``: weight pairs and canary splits."""

from __future__ import annotations

import pytest
import typer

from gateway.cli.versions import canary_weights, parse_weights


def test_weight_pairs() -> None:
    assert parse_weights(["v1=90", "v2=10.5"]) == {"v1": 90, "v2": 10.5}
    for bad in ("v1", "v1=x", "=3"):
        with pytest.raises(typer.BadParameter):
            parse_weights([bad])


def test_a_canary_takes_the_rest_from_the_busiest_other_version() -> None:
    assert canary_weights({"v1": 100}, "v2", 10) == {"v1": 90, "v2": 10}
    assert canary_weights({"v1": 30, "v2": 10, "v3": 60}, "v2", 50) == {"v3": 50, "v2": 50}
    assert canary_weights({"v1": 100}, "v2", 5, base="v3") == {"v3": 95, "v2": 5}
    with pytest.raises(typer.BadParameter):
        canary_weights({"v2": 100}, "v2", 10)
    with pytest.raises(typer.BadParameter):
        canary_weights({"v1": 100}, "v2", 120)


def test_durations_and_steps() -> None:
    from gateway.cli.versions import parse_duration, parse_steps

    assert [parse_duration(t) for t in ("60s", "2m", "500ms", "1h", "7")] == [
        60, 120, 0.5, 3600, 7]
    assert parse_steps("10,50,100") == [10, 50, 100]
    for bad in ("soon", "-1s", "0"):
        with pytest.raises(typer.BadParameter):
            parse_duration(bad)
    with pytest.raises(typer.BadParameter):
        parse_steps("10,x")
