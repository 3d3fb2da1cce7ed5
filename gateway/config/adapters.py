"""How the gateway places LoRA adapters on engines (the adapters themselves are the
top-level ``adapters`` list: :class:`adapters.AdapterSpec`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    """Loading registered adapters on demand, and where their paths may point."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roots: list[str] = Field(
        default_factory=list,
        description="directories (as the engines see them) every adapter path must lie "
                    "under; empty: any absolute path")
    load_timeout_s: float = Field(
        default=60.0, gt=0,
        description="longest a request waits for its adapter to be loaded on an engine, "
                    "a slot for it included (an engine at its bound with every adapter in "
                    "use); past it a 503")
    affinity_weight: float = Field(
        default=2.0, ge=0,
        description="weight of the lora_affinity scorer beside the routing profile's "
                    "(an engine holding the adapter scores 1, one with a free slot 0.5, "
                    "one that must unload an idle adapter 0.25, a full one 0)")
