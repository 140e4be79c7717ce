"""``model.weights``: start from a trained dense model instead of a random initialisation.

The weights are the dense model's ``state_dict``, either a safetensors file (a path,
relative to the repository root where stages run) or a torchvision weights name such as
``ResNet18_Weights.IMAGENET1K_V1``, read from the torch hub cache (nothing is downloaded:
fetch it once where there is internet). Nothing is unpickled: safetensors parses a header
and raw tensors; torchvision's cached ``.pth`` files are read with
``torch.load(weights_only=True)``, which loads tensors only. Loading is strict: the first
missing, unexpected or misshapen tensor is named.

Recipe for your own trained model (same model.arch, channels and classes as the data)::

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "dense.safetensors")
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from pipeline.config import TORCHVISION_WEIGHTS
from pipeline.errors import ConfigError

SAFETENSORS_SUFFIX = ".safetensors"
_RECIPE = (
    "save the trained dense model with safetensors.torch.save_file("
    "{k: v.contiguous() for k, v in model.state_dict().items()}, path)"
)


def is_torchvision_weights(weights: str) -> bool:
    """Whether ``weights`` is a torchvision weights name (else a file path)."""
    return TORCHVISION_WEIGHTS.fullmatch(weights) is not None


def weights_file(weights: str) -> Path:
    """The file ``model.weights`` reads: the path, or the enum's torch hub cache file."""
    if not is_torchvision_weights(weights):
        return Path(weights)
    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / _torchvision_weights(weights).url.rsplit("/", 1)[-1]
    )


def check_weights_source(weights: str) -> Path:
    """Fail fast (cheap: no tensor is read) when the weights cannot be loaded at all."""
    path = weights_file(weights)
    if is_torchvision_weights(weights):
        if not path.is_file():
            raise ConfigError(
                f"model.weights: {weights} is not in the torch hub cache (expected {path}) "
                "and nothing is downloaded here; fetch it where there is internet "
                f"(torchvision.models.get_weight({weights!r}).get_state_dict()) and copy "
                "the file there, or point model.weights at a safetensors file."
            )
        return path
    if not path.is_file():
        raise ConfigError(
            f"model.weights: {path} not found (relative paths start at the repository "
            f"root); {_RECIPE}, or set model.weights: null to start from scratch."
        )
    try:
        with safe_open(path, "pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        _refuse_pickle(path)
        raise ConfigError(
            f"model.weights: {path} is not a readable safetensors file ({err}); {_RECIPE}."
        ) from None
    return path


def load_weights(model: nn.Module, weights: str, what: str) -> None:
    """Load ``weights`` into ``model`` (``what`` describes it for messages), strictly."""
    path = check_weights_source(weights)
    if is_torchvision_weights(weights):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = load_file(path)
    _check_fits(model.state_dict(), state, weights, what)
    model.load_state_dict(state)


def _check_fits(expected: dict, found: dict, weights: str, what: str) -> None:
    from pipeline.artifacts import tensor_mismatches

    problems = [
        f"{name}: missing (expected shape {want})"
        if have is None
        else f"{name}: not a tensor of the model"
        if want is None
        else f"{name}: expected shape {want}, found {have}"
        for name, want, have in tensor_mismatches(expected, found)
    ]
    if problems:
        raise ConfigError(
            f"model.weights: {weights} does not fit {what} ({len(problems)} mismatched "
            f"tensor(s); first {problems[0]}). The file must hold the state_dict of the same "
            "dense model for this data (model.arch, input channels, classes): "
            f"{_RECIPE}; or set model.weights: null."
        )


def _torchvision_weights(weights: str):
    from torchvision.models import get_weight

    try:
        return get_weight(weights)
    except (KeyError, ValueError, AttributeError):
        raise ConfigError(
            f"model.weights: {weights!r} is no torchvision weights name; use one such as "
            "ResNet18_Weights.IMAGENET1K_V1, or a path to a .safetensors file."
        ) from None


def _refuse_pickle(path: Path) -> None:
    """The artifacts' check: a pickle or torch.save file is named as such, never opened."""
    from pipeline.artifacts import _refuse_pickle as refuse
    from pipeline.errors import ArtifactError

    try:
        refuse(path)
    except ArtifactError as err:
        raise ConfigError(f"model.weights: {err}") from None
