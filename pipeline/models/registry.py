"""A small model registry (in the spirit of timm's): names map to factories.

``model.arch`` names one of three kinds of model, resolved here in this order:

- a model registered with ``register_model`` (``available_models()``): a plain
  ``nn.Module`` that also describes its prunable structure through ``channel_layout()``
  (see ``pipeline.pruning.groups``), written by hand;
- a torchvision classification CNN (``pipeline.models.torchvision_zoo``), built lazily:
  its channel layout is discovered by tracing it (``pipeline.pruning.discovery``);
- the user's own factory, ``"package.module:factory"`` (``pipeline.models.user``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.pruning.groups import ChannelLayout


class PrunableModel(Protocol):
    def channel_layout(self) -> ChannelLayout: ...


ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}
# The zeros batch a model must classify before any stage trusts it (check_model_runs), and
# that discovery traces it with: 2 images, so that training-mode BatchNorm works.
PROBE_BATCH = 2


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
    """The registered models: those with a hand-written ``channel_layout()``."""
    return sorted(_MODELS)


def is_hand_written(name: str) -> bool:
    return name in _MODELS


def model_factory(name: str) -> ModelFactory:
    """The factory of ``model.arch`` = ``name``; the one place an unknown name is reported.

    Registered names resolve without importing torchvision (every stage resolves the name
    at start-up); a torchvision name or a user factory imports what it names."""
    from pipeline.models import torchvision_zoo, user

    if name in _MODELS:
        return _MODELS[name]
    if user.is_user_factory(name):
        return user.user_factory(name)
    if torchvision_zoo.is_torchvision_model(name):
        return torchvision_zoo.torchvision_factory(name)
    raise ConfigError(
        f"model.arch: unknown model {name!r}; choose one of {', '.join(available_models())}, "
        "a torchvision classification CNN (`jst models` lists them) or your own factory "
        "as 'package.module:factory'."
    )


def create_model(name: str, *, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build the dense model ``name`` for images of ``in_channels`` x ``input_size``^2."""
    factory = model_factory(name)
    model = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.arch: {name!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            "make the factory return the model itself."
        )
    return model


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device, where nothing is allocated: enough for the structure
    (layouts, widths). A constructor that reads a weight's value (RegNet's) cannot run
    there and is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):  # "Cannot copy out of meta tensor"
        return build()


def check_model_runs(name: str, *, num_classes: int, in_channels: int, input_size: int) -> None:
    """Build ``name`` and classify a zeros batch in training mode, as training will, so that
    a model that cannot take the data fails before any work with a message saying why."""
    from pipeline.models import torchvision_zoo

    torchvision_zoo.check_input_size(name, input_size)
    # The probe draws no random numbers of the caller's: seeded runs stay as they were.
    with torch.random.fork_rng(devices=[]):
        model = create_model(
            name, num_classes=num_classes, in_channels=in_channels, input_size=input_size
        )
        batch = torch.zeros(PROBE_BATCH, in_channels, input_size, input_size)
        output = _classify(model, batch, name)
    found = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if found != (PROBE_BATCH, num_classes):
        raise ConfigError(
            f"model.arch: {name!r} must map a batch of {_shape(batch)} images to "
            f"{PROBE_BATCH} x {num_classes} logits (one per class) in training mode, but "
            f"returned {found}; return the logits tensor alone (no auxiliary outputs) with "
            "num_classes outputs."
        )


def _classify(model: nn.Module, batch: torch.Tensor, name: str):
    try:
        with torch.no_grad():
            return model.train()(batch)
    except Exception as err:  # whatever the model raises, the user must see it named
        _, channels, side, _ = batch.shape
        raise ConfigError(
            f"model.arch: {name!r} fails on a batch of {_shape(batch)} zeros "
            f"({type(err).__name__}: {str(err)[:300]}); the data has {channels} channel(s) of "
            f"{side}x{side} pixels: set data.image_size or fix the model."
        ) from None


def _shape(batch: torch.Tensor) -> str:
    return " x ".join(str(n) for n in batch.shape)


KIND_HAND_WRITTEN, KIND_DISCOVERED, KIND_UNVERIFIED = (
    "hand-written layout",
    "torchvision, layout discovered",
    "torchvision, layout discovery not verified",
)


def verified_models() -> list[str]:
    """The models ``jst models`` lists as verified, without importing torchvision: the
    hand-written layouts, then the torchvision models whose discovered layouts are tested.
    Each runs the whole pipeline (tests/models/test_verified_pipeline.py)."""
    from pipeline.models import torchvision_zoo

    return available_models() + sorted(torchvision_zoo.DISCOVERED)


def model_catalogue(every_torchvision: bool = False) -> list[tuple[str, str]]:
    """(name, kind) of every model ``jst models`` lists: the verified ones (hand-written or
    torchvision ones discovery supports) and, with ``every_torchvision``, the other
    torchvision CNNs (this imports torchvision)."""
    from pipeline.models import torchvision_zoo

    rows = [
        (name, KIND_HAND_WRITTEN if is_hand_written(name) else KIND_DISCOVERED)
        for name in verified_models()
    ]
    if every_torchvision:
        listed = {name for name, _ in rows}
        rows += [
            (n, KIND_UNVERIFIED) for n in torchvision_zoo.torchvision_cnns() if n not in listed
        ]
    return rows
