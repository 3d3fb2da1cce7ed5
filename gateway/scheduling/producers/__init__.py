"""Data producers: state the scheduler's plugins read, fed by the hooks.

A producer is shared by every profile of one :class:`~gateway.scheduling.Scheduler`;
:class:`Producers` holds them, and plugin factories receive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.scheduling.producers.prefix_cache import PrefixCacheIndexer


@dataclass(frozen=True, slots=True)
class Producers:
    """Every data producer of one scheduler."""

    prefix_cache: PrefixCacheIndexer

    def all(self) -> tuple[object, ...]:
        return (self.prefix_cache,)


__all__ = ["PrefixCacheIndexer", "Producers"]
