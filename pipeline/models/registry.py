"""A small model registry (in the spirit of timm's): names map to factories.

Every registered model is a plain ``nn.Module`` that also describes its prunable
structure through ``channel_layout()`` (see ``pipeline.pruning.groups``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

from torch import nn

from pipeline.errors import ConfigError
from pipeline.pruning.groups import ChannelLayout


class PrunableModel(Protocol):
    def channel_layout(self) -> ChannelLayout: ...


ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS and _MODELS[name] is not factory:
            # As timm does: a second definition replaces the first, which is rarely meant.
            warnings.warn(
                f"model {name!r} registered again; the new factory replaces the old", stacklevel=2
            )
        _MODELS[name] = factory
        return factory

    return decorator


def available_models() -> list[str]:
    return sorted(_MODELS)


def model_factory(name: str) -> ModelFactory:
    """The factory registered as ``name``; the one place an unknown ``model.arch`` is named."""
    if name not in _MODELS:
        raise ConfigError(
            f"model.arch: unknown model {name!r}; choose one of {', '.join(available_models())}."
        )
    return _MODELS[name]


def create_model(name: str, *, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build the dense model ``name`` for images of ``in_channels`` x ``input_size``^2."""
    factory = model_factory(name)
    return factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
