"""A feature map larger than 1x1 flattened into a linear layer (VGG, AlexNet): the layer's
input columns are sliced per kept channel, a block of H x W columns each; masked dense ==
sliced compact, the FLOPs model == counted FLOPs, and scatter inverts slice."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.pruning.discovery import discover
from pipeline.pruning.exactness import check, discovered_for_check, random_keep

SHAPE = (3, 8, 8)


class _VggLike(nn.Module):
    """conv-BN blocks, the last one's 4x4 map flattened into a two-layer classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(5 * 4 * 4, 12), nn.ReLU(), nn.Dropout(), nn.Linear(12, 3)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class _AlexLike(nn.Module):
    """Convs without BN, an adaptive pool to 3x3 (larger than the 2x2 map: copies), then
    dropout before the first linear layer, as torchvision's AlexNet."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 7, 3, stride=2, padding=1), nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(3)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(7 * 9, 10), nn.ReLU(),
                                        nn.Linear(10, 3))  # fmt: skip

    def forward(self, x):
        x = self.avgpool(self.pool(torch.relu(self.conv(x))))
        return self.classifier(x.flatten(1))


class _ReshapedAgain(nn.Module):
    """A flattened map that something other than a linear layer reads stays whole."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x):
        flat = torch.flatten(self.bn(self.conv(x)), 1)
        return self.fc(flat * flat.mean(1, keepdim=True))


MODELS = {"vgg_like": _VggLike, "alex_like": _AlexLike}
_DENSE: dict = {}


def _dense(name):
    if name not in _DENSE:
        _DENSE[name] = discovered_for_check(MODELS[name], SHAPE)
    return _DENSE[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_flattened_channels_are_a_group_read_in_blocks(name):
    _, found, _ = _dense(name)
    assert found.whole == ()
    first_linear, block = ("classifier.0", 16) if name == "vgg_like" else ("classifier.1", 9)
    wiring = {w.module: w for w in found.layout.layers}[first_linear]
    assert wiring.in_group is not None and wiring.in_block == block


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_dense_equals_sliced_compact_and_flops_agree(name, seed):
    model, found, flops = _dense(name)
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *SHAPE, generator=generator)
    report = check(model, found.layout, keep, x, flops)
    assert report.holds(tolerance=1e-5), report


def test_a_flattened_map_read_by_another_op_stays_whole():
    found = discover(_ReshapedAgain(), SHAPE)
    assert found.layout.groups == {}
    assert any("flattened with their map" in why for _, why in found.whole)
