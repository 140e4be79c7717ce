"""``model.weights``: start from a trained dense model instead of a random initialisation.

The weights are the dense model's ``state_dict``, either a safetensors file (a path,
relative to the repository root where stages run) or a torchvision weights name such as
``ResNet18_Weights.IMAGENET1K_V1``, read from the torch hub cache (nothing is downloaded:
fetch it once where there is internet). Nothing is unpickled: safetensors parses a header
and raw tensors; torchvision's cached ``.pth`` files are read with
``torch.load(weights_only=True)``, which loads tensors only.

Weights trained on other classes or other channels start a model for this data as
transfer-learning code does: when the data's class count differs, the classifier head (the
last conv or linear layer in module order) keeps its fresh initialisation; when its channel
count differs, the first convolution's kernels are adapted (for 1-channel data the RGB
kernels are summed, so a grey image gives the response it gave in RGB; otherwise they are
tiled over the channels and scaled by old / new channels, timm's rule). Every replaced or
adapted layer is named in the log. Everything else loads strictly: the first missing,
unexpected or misshapen tensor is named.

Recipe for your own trained model (same model.arch as the data's)::

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, "dense.safetensors")
"""

from __future__ import annotations

import math
from collections import OrderedDict
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


def load_weights(model: nn.Module, weights: str, what: str) -> list[str]:
    """Load ``weights`` into ``model`` (``what`` describes it for messages), strictly but for
    the classifier head and the first convolution's input channels, which are fitted to
    the data (see the module docstring). Returns what was replaced or adapted (also logged)."""
    from pipeline.artifacts import load_state_dict_with_versions
    from pipeline.progress import console

    path = check_weights_source(weights)
    if is_torchvision_weights(weights):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = load_file(path)
    state, changes = fitted_to_model(model, state)
    _check_fits(model.state_dict(), state, weights, what)
    load_state_dict_with_versions(model, state)
    for change in changes:
        console.log(f"model.weights: {change}")
    return changes


def fitted_to_model(model: nn.Module, state: dict) -> tuple[dict, list[str]]:
    """``state`` with the classifier head replaced by ``model``'s freshly initialised one when
    the class counts differ, and the first convolution's kernels adapted when the input
    channels differ; with a description of each change. Any other difference is left for
    the strict check to report."""
    expected = model.state_dict()
    fitted = OrderedDict(state)
    if (versions := getattr(state, "_metadata", None)) is not None:
        fitted._metadata = versions  # type: ignore[attr-defined]
    changes = []
    head = _classifier_head(model)
    if head is not None and _differs_only_in(expected, state, head, dim=0):
        fresh, found = expected[f"{head}.weight"].shape[0], state[f"{head}.weight"].shape[0]
        for name in _parameter_names(head, expected):
            fitted[name] = expected[name]
        changes.append(
            f"replaced the classifier head {head!r} ({found} classes in the weights, {fresh} in "
            "the data): freshly initialised, to be trained"
        )
    stem = _first_conv(model)
    if stem is not None and _differs_only_in(expected, state, stem, dim=1):
        key = f"{stem}.weight"
        have, want = state[key].shape[1], expected[key].shape[1]
        fitted[key] = adapted_input_kernels(state[key], want)
        rule = "summed" if want == 1 else f"tiled and scaled by {have}/{want}"
        changes.append(
            f"adapted the first convolution {stem!r} from {have} to {want} input channel(s) "
            f"(its kernels {rule})"
        )
    return fitted, changes


def adapted_input_kernels(kernels: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's kernels (out x in x kh x kw) for ``in_channels`` inputs: summed
    over the inputs for one channel (a grey image then gives the response the kernels gave
    to it in RGB), else tiled over the inputs and scaled by in / in_channels, timm's rule
    (the same response to grey images when ``in_channels`` is a multiple of ``in``, the
    same scale of response otherwise)."""
    have = kernels.shape[1]
    if in_channels == 1:
        return kernels.sum(dim=1, keepdim=True)
    tiled = kernels.repeat(1, math.ceil(in_channels / have), 1, 1)[:, :in_channels]
    return tiled * (have / in_channels)


def _classifier_head(model: nn.Module) -> str | None:
    """The last conv or linear layer in module order: the classifier of every torchvision
    and registered CNN."""
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1] if layers else None


def _first_conv(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _parameter_names(module: str, expected: dict) -> list[str]:
    return [f"{module}.{p}" for p in ("weight", "bias") if f"{module}.{p}" in expected]


def _differs_only_in(expected: dict, found: dict, module: str, dim: int) -> bool:
    """Whether ``module``'s weight differs between the model and the weights in dimension
    ``dim`` alone (and its bias, if any, along with it when dim is 0)."""
    key = f"{module}.weight"
    if key not in expected or key not in found:
        return False
    want, have = expected[key].shape, found[key].shape
    if len(want) != len(have) or want[dim] == have[dim]:
        return False
    if any(w != h for d, (w, h) in enumerate(zip(want, have, strict=True)) if d != dim):
        return False
    bias = f"{module}.bias"
    if bias not in expected:
        return bias not in found
    if bias not in found:
        return False
    return found[bias].shape == ((have[0],) if dim == 0 else expected[bias].shape)


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
            f"tensor(s); first {problems[0]}). Only the classifier head (other classes) and "
            "the first convolution (other input channels) are fitted to the data; every "
            "other tensor must be the dense model's (same model.arch): "
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
