"""Model-version types that every layer shares: an alias's traffic policy, and how long
per-version measurements are kept by default (:mod:`gateway.versions` acts on them;
:mod:`gateway.stores` keeps them; :mod:`gateway.config.versions` validates them)."""

from __future__ import annotations

from dataclasses import dataclass, field

RETENTION_S = 4 * 3600.0
"""How long measurements are kept by default (``versions.measure_retention_s``)."""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """How an alias's traffic is split over its versions (weights sum to > 0)."""

    weights: dict[str, float] = field(default_factory=dict)
    shadow: dict[str, float] = field(default_factory=dict)
    """Mirror fraction per version (answers never reach the client)."""
