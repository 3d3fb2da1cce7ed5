"""Counting requests to the engine-answered endpoints that end before the director
takes them.

The director counts every request it runs in ``sluice_requests_total``. Requests refused
earlier (401 without a key, 413, 415, a body that is not JSON, a client gone while
sending) are counted by the edge (:mod:`gateway.edge.gate`), with model ``unknown``,
version and engine ``none`` so that nothing a client sends can add label values.
"""

from __future__ import annotations

from starlette.types import Scope

_DIRECTOR_COUNTS = "director_counts"


def director_counts(scope: Scope) -> None:
    """Mark the request as the director's to count (call just before handing it over)."""
    scope["state"][_DIRECTOR_COUNTS] = True


def counted_by_director(scope: Scope) -> bool:
    return bool(scope["state"].get(_DIRECTOR_COUNTS))
