"""A registered LoRA adapter: its name, the base model it fine-tunes, and where the
engines find its weights.

The path is as the engines see it (a directory on their file system or volume), and is
only ever taken from the registry: a request names an adapter, never a path. With
``adapter_roots`` configured, every path must lie under one of them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class AdapterSpec(BaseModel):
    """One adapter: ``name`` is what clients send as ``model``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="what clients send as \"model\" (letters, digits, . _ : -)")
    base: str = Field(description="the base model it was trained on, as the engines serve it")
    path: str = Field(description="its weights' directory, as the engines see it (absolute)")
    rank: int | None = Field(
        default=None, ge=1, le=1024,
        description="its LoRA rank; an engine whose max_lora_rank is lower is not asked")
    version: str | None = Field(default=None, max_length=128)
    owner: str | None = Field(default=None, max_length=128)
    pinned: bool = Field(
        default=False,
        description="never unloaded to make room for another adapter")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"adapter name {name[:100]!r}: 1 to 128 of letters, digits and "
                             "'.', '_', ':', '-', starting with a letter or digit")
        return name

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/") or "\x00" in path:
            raise ValueError(f"adapter path {path[:200]!r} must be absolute")
        normal = posixpath.normpath(path)
        if normal != path.rstrip("/") or ".." in normal.split("/"):
            raise ValueError(f"adapter path {path[:200]!r} must be normalized (no '..', "
                             "'.' or '//')")
        return normal


def under_roots(path: str, roots: Sequence[str]) -> bool:
    """Whether ``path`` (normalized, absolute) lies under one of ``roots`` (every path
    does when none is configured)."""
    if not roots:
        return True
    return any(path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/")
               for root in roots)
