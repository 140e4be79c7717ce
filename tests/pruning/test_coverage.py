"""Coverage over the models `jst models` verifies: at least 0.95 of every model's conv
channels prune (ShuffleNet excepted: its channel shuffle and chunk stay whole), ConvNeXt's
MLP hidden widths prune, and `jst models --coverage` shows each share."""

import pytest
import torch
from torch import nn

from pipeline.models.torchvision_zoo import DISCOVERED
from pipeline.pruning.coverage import catalogue_lines, layout_coverage, model_coverage
from pipeline.pruning.discovery import discover

pytest.importorskip("torchvision")

# Below 0.95, with the reason; the share is a floor, so a regression still fails.
SHORTFALL = {
    "shufflenet_v2_x0_5": 0.70,  # channel shuffle (view/transpose) and chunk stay whole
    "shufflenet_v2_x1_0": 0.64,
}


@pytest.mark.parametrize("name", DISCOVERED)
def test_every_verified_model_prunes_most_of_its_conv_channels(name):
    share = model_coverage(name).conv_share
    assert share >= SHORTFALL.get(name, 0.95), (name, share)


def test_convnext_keeps_its_conv_channels_whole_but_prunes_its_mlp_hidden_widths():
    coverage = model_coverage("convnext_tiny")
    assert coverage.conv_share == 0.0
    assert coverage.prunable_linear_features == 4 * (96 * 3 + 192 * 3 + 384 * 9 + 768 * 3)


class _HalfWhole(nn.Module):
    """Two convs; the second's channels are the output (whole): half the channels prune."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


def test_coverage_counts_the_conv_channels_in_groups():
    model = _HalfWhole()
    coverage = layout_coverage(model, discover(model, (3, 8, 8)).layout)
    assert (coverage.prunable_conv_channels, coverage.conv_channels) == (4, 8)
    assert coverage.describe() == "0.50 of conv channels prunable"


def test_the_catalogue_shows_the_share_of_verified_models_only():
    rows = [("resnet20", "hand-written layout"), ("alexnet", "not verified")]
    lines = catalogue_lines(rows, verified={"resnet20"})
    assert lines[0].endswith("1.00 of conv channels prunable")
    assert lines[1].split() == ["alexnet", "not", "verified"]
    assert "share of conv output channels" in lines[-1]
    assert "--coverage" in catalogue_lines(rows, verified=set())[-1]


def test_coverage_is_measured_without_allocating_weights():
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    model_coverage("resnet20")
    assert (torch.cuda.memory_allocated() if torch.cuda.is_available() else 0) == before
