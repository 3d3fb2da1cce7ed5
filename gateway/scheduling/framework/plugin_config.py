"""What a plugin is built from: its type name, its params and the data producers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:  # (a type only: producers are plugins' data, built by the scheduler)
    from gateway.scheduling.producers import Producers


class PluginConfigError(ValueError):
    """A routing profile names an unknown plugin, or configures one wrongly."""


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """What a factory builds a plugin from."""

    type: str
    params: Mapping[str, Any]
    """The plugin's ``params`` from the profile (empty when none)."""
    producers: Producers
    """The scheduler's data producers, for plugins that read them."""


Factory = Callable[[PluginConfig], object]
"""Builds one plugin instance (a Filter, Scorer or Picker) from its configuration."""


class Params(BaseModel):
    """Base of a plugin's typed parameters: unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=Params)


def parse_params(config: PluginConfig, model: type[P]) -> P:
    """``config.params`` validated as ``model``; errors name the plugin."""
    try:
        return model.model_validate(dict(config.params))
    except ValidationError as exc:
        raise PluginConfigError(f"plugin {config.type!r}: invalid params: {exc}") from exc
