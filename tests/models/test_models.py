"""Every registered model builds, runs, and declares a complete channel layout."""

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import available_models, create_model, model_factory

SMALL_INPUT = {"resnet18": 64, "resnet34": 64, "resnet50": 64}


@pytest.mark.parametrize("name", available_models())
def test_every_conv_bn_linear_is_wired(name):
    size = SMALL_INPUT.get(name, 16)
    model = create_model(name, num_classes=7, in_channels=1, input_size=size)
    layout = model.channel_layout()
    wired = {w.module for w in layout.layers}
    prunable = {
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)
    }
    assert wired == prunable
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18", "resnet50"])
def test_residual_groups_are_coupled(name):
    model = create_model(name, num_classes=10, in_channels=3, input_size=32)
    coupled = [g for g in model.channel_layout().groups.values() if g.coupled]
    assert len(coupled) >= 3
    for g in coupled:
        assert len(g.bns) >= 2  # a producer plus every block's last BN


def test_unknown_model_names_the_parameter():
    with pytest.raises(ConfigError, match="model.arch"):
        create_model("resnet9000", num_classes=10, in_channels=3, input_size=32)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_vgg_accepts_small_inputs(size):
    model = create_model("vgg16", num_classes=10, in_channels=3, input_size=size).eval()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_registering_a_name_twice_warns_and_the_new_factory_wins():
    from pipeline.models import registry

    def first(**kwargs):
        return nn.Identity()

    def second(**kwargs):
        return nn.Identity()

    try:
        registry.register_model("toy-twice")(first)
        with pytest.warns(UserWarning, match="'toy-twice' registered again"):
            registry.register_model("toy-twice")(second)
        assert model_factory("toy-twice") is second
    finally:
        registry._MODELS.pop("toy-twice", None)


def test_unknown_model_names_the_parameter_and_the_choices():
    with pytest.raises(ConfigError, match=r"model.arch: unknown model 'resnet9000'; choose one of"):
        model_factory("resnet9000")
