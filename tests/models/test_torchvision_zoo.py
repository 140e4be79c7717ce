"""torchvision's classification CNNs as model.arch: built lazily, any channel count, a clear
error for inputs below a model's minimum size; listing them never imports torchvision."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import available_models, check_model_runs, create_model, model_factory
from pipeline.models import torchvision_zoo as zoo

# Small and quick to build; googlenet also needs its builder options (no auxiliary heads).
SMALL = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet"]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", SMALL)
def test_small_models_classify_32px_images_of_any_channel_count(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels, input_size=32)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    assert model.train()(torch.randn(2, in_channels, 32, 32)).shape == (2, 7)
    assert model.eval()(torch.randn(2, in_channels, 32, 32)).shape == (2, 7)


def test_every_listed_model_is_a_torchvision_cnn_that_builds():
    """Construction only, on the meta device where the builder allows it (no memory, no
    initialisation cost); RegNet's builder computes widths with real tensors."""
    assert set(zoo.DISCOVERED) <= set(zoo.torchvision_cnns())
    assert not set(zoo.DISCOVERED) & set(available_models())  # a registered name wins
    for name in zoo.DISCOVERED:
        device = "cpu" if name.startswith("regnet") else "meta"
        with torch.device(device):
            model = create_model(name, num_classes=5, in_channels=1, input_size=64)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == 1, name


def test_unlisted_torchvision_cnns_resolve_too():
    assert "alexnet" not in zoo.DISCOVERED
    model_factory("alexnet")


@pytest.mark.parametrize(("name", "needed"), [("inception_v3", 75), ("alexnet", 63)])
def test_inputs_below_a_models_minimum_size_are_refused_before_building(name, needed):
    with pytest.raises(
        ConfigError, match=f"needs inputs of at least {needed} pixels.*data.image_size"
    ):
        check_model_runs(name, num_classes=10, in_channels=3, input_size=32)


def test_vision_transformers_are_refused():
    with pytest.raises(ConfigError, match="model.arch: 'vit_b_16' is a vision transformer"):
        model_factory("vit_b_16")


def test_a_model_without_an_rgb_first_convolution_cannot_take_other_channels():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 3, 3))
    with pytest.raises(ConfigError, match="no plain 3-channel first convolution"):
        zoo.with_input_channels(model, 1, "toy")


def test_the_adapted_convolution_keeps_the_first_ones_configuration():
    conv = nn.Conv2d(3, 16, 5, stride=2, padding=2, dilation=1, bias=False)
    model = zoo.with_input_channels(nn.Sequential(conv, nn.ReLU()), 2, "toy")
    new = model[0]
    assert (new.in_channels, new.out_channels, new.kernel_size) == (2, 16, (5, 5))
    assert (new.stride, new.padding, new.bias) == ((2, 2), (2, 2), None)


def test_probing_a_model_leaves_the_random_stream_as_it_was():
    torch.manual_seed(3)
    check_model_runs("mobilenet_v3_small", num_classes=4, in_channels=1, input_size=32)
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after_probe, torch.rand(3))


def test_stages_resolve_registered_and_listed_names_without_importing_torchvision():
    code = (
        "import sys\n"
        "from pipeline.config import parse_config\n"
        "from pipeline.models.registry import model_catalogue\n"
        "from stages.common import resolve_names\n"
        "resolve_names(parse_config({}))\n"
        "assert ('mobilenet_v2', 'torchvision, layout discovered') in model_catalogue()\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
