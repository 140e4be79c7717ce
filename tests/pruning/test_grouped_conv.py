"""Grouped convolutions (ResNeXt, RegNet) prune group-consistently: the channels they read
and write are tiled by the conv's groups and every tile keeps the same positions, so every
conv group keeps as many channels and the group count stays; masked dense == sliced
compact, FLOPs model == counted FLOPs, JST's gates fold, scatter inverts slice."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.methods.jst.gates import learnable_gates
from pipeline.pruning.exactness import (
    check,
    compact_of,
    discovered_for_check,
    gated_then_folded,
    random_keep,
)
from pipeline.pruning.importance import MagnitudeImportance

SHAPE = (3, 8, 8)


def _conv_bn(c_in, c_out, kernel=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class _ResNeXtLike(nn.Module):
    """A bottleneck whose 3x3 conv has 4 groups (8 -> 12 channels: 2 in, 3 out per group),
    with an identity shortcut, then a squeeze-and-excitation on the grouped output."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 6, 3)
        self.reduce = _conv_bn(6, 8)
        self.grouped = _conv_bn(8, 12, 3, groups=4)
        self.fc1, self.fc2 = nn.Conv2d(12, 3, 1), nn.Conv2d(3, 12, 1)
        self.expand = nn.Sequential(nn.Conv2d(12, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.grouped(self.reduce(x))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        x = torch.relu(x + self.expand(y * scale))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def resnext():
    return discovered_for_check(_ResNeXtLike, SHAPE)


def test_the_channels_a_grouped_conv_reads_and_writes_are_tiled_by_its_groups(resnext):
    model, found, _ = resnext
    groups = found.layout.groups
    assert found.whole == ()
    assert (groups["reduce.0"].tiles, groups["reduce.0"].width) == (4, 2)
    assert (groups["grouped.0"].tiles, groups["grouped.0"].width) == (4, 3)
    assert groups["stem.0"].tiles == 1 and groups["fc1"].tiles == 1
    keep = {name: torch.arange(max(1, g.width - 1)) for name, g in groups.items()}
    grouped = compact_of(model, found.layout, keep).grouped[0]  # keeps 1 of 2, 2 of 3
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (4, 4, 8)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_dense_equals_sliced_compact_and_flops_agree(resnext, seed):
    model, found, flops = resnext
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *SHAPE, generator=generator)
    report = check(model, found.layout, keep, x, flops)
    assert report.holds(tolerance=1e-5), report


def test_jst_gates_fold_and_l1_scores_a_position_over_every_tile(resnext):
    model, found, _ = resnext
    layout = found.layout
    model = copy.deepcopy(model)
    scores = MagnitudeImportance()(model, layout)
    norms = model.grouped[0].weight.abs().flatten(1).sum(1)
    torch.testing.assert_close(scores["grouped.0"], norms.view(4, 3).sum(0))
    generator = torch.Generator().manual_seed(2)
    gates = {n: torch.rand(g.width, generator=generator) * 2 for n, g in layout.groups.items()}
    x = torch.randn(2, *SHAPE, generator=generator)
    expected, folded = gated_then_folded(model, layout, gates, x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_jst_learnable_gates_on_a_compact_model_get_a_gradient_in_every_group(resnext):
    model, found, _ = resnext
    keep = random_keep(found.layout, torch.Generator().manual_seed(6))
    sub = compact_of(model, found.layout, keep).train()
    alpha = {group: torch.zeros(len(kept)) for group, kept in keep.items()}
    with learnable_gates(sub, found.layout, alpha) as net:
        net(torch.randn(4, *SHAPE)).sum().backward()
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alpha)
