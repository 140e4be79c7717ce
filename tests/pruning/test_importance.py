"""Importance criteria: their scores, their width rules, and a new criterion in one class."""

import pytest
import torch

from pipeline.models import create_model
from pipeline.pruning.budget import global_threshold_widths, uniform_budget_widths
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.importance import (
    BNScaleImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
)


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_channels=1, input_size=8)
    for m in model.modules():  # distinct gammas, so that thresholds have something to sort
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(-1, 1)
    layout = model.channel_layout()
    return model, layout, FlopsModel(model, layout, (1, 8, 8))


def test_magnitude_sums_the_filter_l1_norms_of_a_groups_scored_convs(resnet):
    model, layout, _ = resnet
    scores = MagnitudeImportance()(model, layout)
    modules = dict(model.named_modules())
    for name, group in layout.groups.items():
        expected = sum(modules[c].weight.abs().sum((1, 2, 3)) for c in group.scored_convs)
        torch.testing.assert_close(scores[name], expected.detach())
    assert any(len(g.scored_convs) > 1 for g in layout.groups.values())  # coupled groups


def test_bn_scale_is_the_mean_absolute_gamma_of_a_groups_scored_bns(resnet):
    model, layout, _ = resnet
    scores = BNScaleImportance()(model, layout)
    modules = dict(model.named_modules())
    for name, group in layout.groups.items():
        gammas = torch.stack([modules[b].weight.detach().abs() for b in group.scored_bns])
        torch.testing.assert_close(scores[name], gammas.mean(0))


def test_random_scores_repeat_for_a_seed_and_leave_the_global_rng_alone(resnet):
    model, layout, _ = resnet
    state = torch.get_rng_state()
    a, b = RandomImportance(3)(model, layout), RandomImportance(3)(model, layout)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[g], b[g]) for g in a)
    assert any(not torch.equal(a[g], RandomImportance(4)(model, layout)[g]) for g in a)


def test_each_criterion_brings_its_width_rule(resnet):
    """Filter norms of different layers do not compare: one ratio per layer. BN gammas
    do: one global threshold (network slimming)."""
    model, layout, flops = resnet
    groups = layout.prunable_groups(True)
    for criterion in (MagnitudeImportance(), RandomImportance(0)):
        scores = criterion(model, layout)
        assert criterion.widths(flops, scores, groups, 0.5, 1) == uniform_budget_widths(
            flops, groups, 0.5, 1
        )
    scores = BNScaleImportance()(model, layout)
    widths = BNScaleImportance().widths(flops, scores, groups, 0.5, 1, 2)
    assert widths == global_threshold_widths(flops, scores, groups, 0.5, 1, 2)
    assert widths != uniform_budget_widths(flops, groups, 0.5, 1, 2)


class LastChannels(Importance):
    """A new criterion is one small class: here, keep the highest-numbered channels."""

    def __call__(self, model, layout):
        return {n: torch.arange(g.width, dtype=torch.float32) for n, g in layout.groups.items()}


def test_kept_channels_are_the_best_scored_within_the_budget(resnet):
    model, layout, flops = resnet
    groups = layout.prunable_groups(True)
    keep = LastChannels().kept_channels(model, layout, flops, groups, 0.5, 1)
    widths = {g: len(k) for g, k in keep.items()}
    assert 0.49 <= flops.ratio(widths) <= 0.5
    for name, kept in keep.items():
        width = layout.groups[name].width
        assert torch.equal(kept, torch.arange(width - len(kept), width))
