"""Layers no BatchNorm follows (AlexNet's convs, classifier hidden layers, SE squeezes) are
prunable: their groups are gated on the producing layers' outputs, the masked dense model
equals the sliced one, JST's gates fold into the layers, and slimming, which scores by BN
gammas, keeps them whole and says so."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.pruning.exactness import check, discovered_for_check, gated_then_folded, random_keep
from pipeline.pruning.importance import BNScaleImportance, MagnitudeImportance

SHAPE = (3, 16, 16)


class _Plain(nn.Module):
    """AlexNet's shape in small: convs with biases and no BN, a hidden classifier layer;
    one conv-BN block in between, so both kinds of gate meet."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(10, 12), nn.ReLU(), nn.Dropout(), nn.Linear(12, 4)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def plain():
    return discovered_for_check(_Plain, SHAPE)


def test_groups_without_a_batchnorm_are_gated_on_their_producers_outputs(plain):
    _, found, _ = plain
    groups = found.layout.groups
    assert set(groups) == {"features.0", "features.3", "features.6", "classifier.1"}
    assert found.whole == ()
    for name in ("features.0", "features.6", "classifier.1"):
        assert groups[name].output_gates == (name,) and groups[name].bns == ()
        assert groups[name].scored_convs == (name,) and groups[name].scored_bns == ()
    assert groups["features.3"].output_gates == () and groups["features.3"].bns == ("features.4",)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_dense_equals_sliced_compact_and_flops_agree(plain, seed):
    model, found, flops = plain
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *SHAPE, generator=generator)
    report = check(model, found.layout, keep, x, flops)
    assert report.holds(tolerance=1e-5), report


def test_jst_gates_fold_into_the_layers_they_sit_on(plain):
    model, found, _ = plain
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    layout = found.layout
    gates = {n: torch.rand(g.width, generator=generator) * 2 for n, g in layout.groups.items()}
    x = torch.randn(2, *SHAPE, generator=generator)
    expected, folded = gated_then_folded(model, found.layout, gates, x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_l1_scores_groups_without_a_batchnorm_and_slimming_names_and_keeps_them(plain):
    model, found, flops = plain
    layout, groups = found.layout, list(found.layout.groups)
    scores = MagnitudeImportance()(model, layout)
    expected = model.features[0].weight.abs().flatten(1).sum(1)
    torch.testing.assert_close(scores["features.0"], expected)
    with pytest.warns(RuntimeWarning, match=r"cannot score 3 .*features\.0.*l1, random or jst"):
        keep = BNScaleImportance().kept_channels(model, layout, flops, groups, 0.9, k_min=1)
    for name in ("features.0", "features.6", "classifier.1"):
        assert torch.equal(keep[name], torch.arange(layout.groups[name].width))
    assert len(keep["features.3"]) < layout.groups["features.3"].width
