"""API-key records: what the gateway keeps about a managed key (never the key itself).

A key is shown to its creator once; the stores keep only its SHA-256 digest, so neither
a store's contents nor a log line can be used to authenticate.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "sk-sluice-"
"""Every generated key starts with it (secret scanners can find leaked ones)."""


def hash_key(plain: str) -> str:
    """The hex SHA-256 digest a store keeps and looks keys up by."""
    return hashlib.sha256(plain.encode()).hexdigest()


def new_secret() -> str:
    """A fresh key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """A fresh key id (``k-`` and 12 hex digits): what logs and metrics name."""
    return "k-" + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's rate limits over a sliding minute; None: unlimited."""

    rpm: int | None = None
    """Requests admitted per minute."""
    tpm: int | None = None
    """Tokens (prompt + completion, as streamed) per minute."""

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One managed key. ``models`` empty: every model."""

    id: str
    name: str
    key_hash: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    created: float = 0.0
    """Unix time of its creation."""
    revoked_at: float | None = None
    """Unix time of its revocation; None while it is valid."""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def limits(self) -> Limits:
        return Limits(self.rpm, self.tpm)

    def allows(self, model: str) -> bool:
        """May this key ask for ``model`` (the name the client sent, alias or not)?"""
        return not self.models or model in self.models

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it: everything but the digest."""
        return {"id": self.id, "object": "api_key", "name": self.name,
                "models": list(self.models), "rpm": self.rpm, "tpm": self.tpm,
                "created": int(self.created), "revoked": self.revoked,
                "revoked_at": None if self.revoked_at is None else int(self.revoked_at)}
