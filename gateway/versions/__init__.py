"""Model aliases and their versions: configuration, the resolver the director's resolve
step calls, and the policies the admin API changes (see ``docs/explanation/versions.md``)."""

from gateway.config.versions import AliasSettings, VersionSpec, VersionsSettings, policy_problem
from gateway.core.context import PIN_HEADER
from gateway.versions.router import VersionRouter, pick, point, policy_json

__all__ = ["PIN_HEADER", "AliasSettings", "VersionRouter", "VersionSpec", "VersionsSettings",
           "pick", "point", "policy_json", "policy_problem"]
