"""Scheduling as plugins: which engine serves a request.

A :class:`Scheduler` runs the request's model's profile: filters, weighted scorers, a
picker, all plugins built by type name from a :class:`Registry` and configured in
``routing.profiles``. Data producers (the prefix-cache index) learn from the hooks
:meth:`Scheduler.attempt_opened` and :meth:`Scheduler.engine_restarted`.
"""

from gateway.scheduling.framework.interfaces import (
    AttemptObserver,
    Candidate,
    Cycle,
    Filter,
    Picker,
    RestartObserver,
    Scorer,
    Scores,
)
from gateway.scheduling.framework.plugin_config import Params, PluginConfig, PluginConfigError
from gateway.scheduling.registry import Registry, default_registry
from gateway.scheduling.scheduler import Scheduler

__all__ = [
    "AttemptObserver",
    "Candidate",
    "Cycle",
    "Filter",
    "Params",
    "Picker",
    "PluginConfig",
    "PluginConfigError",
    "Registry",
    "RestartObserver",
    "Scheduler",
    "Scorer",
    "Scores",
    "default_registry",
]
