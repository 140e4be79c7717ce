"""A budget that no widths can meet is refused by every method before any training (and a
latency budget before its latency model is measured), naming the model, why not enough or
nothing is prunable, and only the fixes that would help."""

import itertools
import sys
import textwrap

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.methods import base, get_method
from pipeline.methods.base import SearchContext
from tests.conftest import synthetic_data, tiny_config

METHODS = ["jst", "l1", "slimming", "random", "scratch"]
# Nothing to prune: the first conv's channels meet a GroupNorm (a normalisation over groups
# of channels: pruning one would change the others), the second conv's are the classes.
UNPRUNABLE_MODULE = """
from torch import nn

def group_normed(num_classes, in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
"""
_names = itertools.count()


@pytest.fixture
def no_training(monkeypatch):
    """Any optimizer built (SGD, Adam: every method's training builds one) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("an optimizer was built: training began before the budget check")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)


@pytest.fixture
def unprunable_model(tmp_path, monkeypatch):
    name = f"unprunable_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(UNPRUNABLE_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:group_normed"
    sys.modules.pop(name, None)


def search_with(arch: str, method: str = "l1", **search):
    cfg = tiny_config(model={"arch": arch}, search={"method": method, "epochs": 3, **search})
    ctx = SearchContext(cfg, synthetic_data(per_class=3), torch.device("cpu"))
    with pytest.raises(ConfigError) as caught:
        get_method(method)(ctx)
    return str(caught.value)


@pytest.mark.parametrize("method", METHODS)
def test_a_model_with_nothing_prunable_is_refused_before_training(
    method, unprunable_model, no_training
):
    message = search_with(unprunable_model, method)
    assert message.startswith(
        f"search.target_flops=0.5 cannot be met for model '{unprunable_model}': nothing in it "
        "is prunable (it has no channel group that can be pruned exactly; left whole: the "
        "channels of '0' ("
    )
    assert "so every method would keep the dense network. Choose another model" in message
    assert "prune_residual" not in message  # it is true, and there is nothing residual


def test_a_latency_budget_is_refused_before_its_latency_model_is_measured(
    unprunable_model, no_training, monkeypatch
):
    def measure(*args, **kwargs):
        raise AssertionError("the latency model was measured")

    monkeypatch.setattr(base, "deployment_latency_model", measure)
    message = search_with(unprunable_model, target_latency=0.5)
    assert message.startswith(
        f"search.target_latency=0.5 cannot be met for model '{unprunable_model}': nothing"
    )


@pytest.mark.parametrize("method", METHODS)
def test_too_low_a_budget_is_refused_before_training_with_the_fixes_that_help(method, no_training):
    message = search_with("resnet20", method, target_flops=0.05, prune_residual=False)
    assert message.startswith(
        "search.target_flops=0.05 cannot be met for model 'resnet20': even with each of its 9 "
        "prunable channel group(s) cut to its floor (search.k_min=1 rounded up to "
        "search.round_to=8) it keeps 0.305 of the FLOPs"
    )
    assert "raise search.target_flops to 0.305 or more" in message
    assert "lower search.round_to (now 8): at 1 the floor is 0.047" in message
    assert "search.k_min (now" not in message  # k_min is 1 already
    assert "set search.prune_residual: true (it adds the residual groups: the floor" in message


def test_prune_residual_is_suggested_only_when_it_is_false():
    message = search_with("resnet20", target_flops=0.01, prune_residual=True)
    assert "it keeps 0.117 of the FLOPs" in message
    assert "prune_residual" not in message


def test_a_finer_round_to_is_suggested_only_when_it_would_lower_the_floor():
    message = search_with("resnet20", target_flops=0.001, round_to=1)
    assert "search.round_to" in message.split("To fix:")[0]  # the floor it describes
    assert "lower search" not in message


NO_BATCHNORM_MODULE = """
from torch import nn

def plain(num_classes, in_channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
"""


def test_slimming_on_groups_no_batchnorm_carries_is_refused_before_training(
    tmp_path, monkeypatch, no_training
):
    """l1 prunes such groups (gated on the convs' outputs); slimming has no BN gamma to
    rank them by, so for it nothing is prunable: refused before its dense pre-training."""
    name = f"no_bn_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NO_BATCHNORM_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        message = search_with(f"{name}:plain", "slimming")
    finally:
        sys.modules.pop(name, None)
    assert "cannot be met" in message and "nothing in it is prunable" in message
