"""The sampler's cumulative-mass rule, k_min, round_to, and the budget projection."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.methods.jst.sampler import GroupScores, Sampler, gumbel_perturb, width_for_mass
from pipeline.models import create_model
from pipeline.pruning.flops import FlopsModel


def _cumulative(masses):
    return torch.cumsum(torch.tensor(masses, dtype=torch.float64), 0)


@pytest.mark.parametrize(
    ("masses", "tau", "expected"),
    [
        ([0.5, 0.3, 0.1, 0.1], 0.5, 1),  # the top filter alone reaches the mass
        ([0.5, 0.3, 0.1, 0.1], 0.51, 2),
        ([0.5, 0.3, 0.1, 0.1], 0.8, 2),  # exactly reached
        ([0.5, 0.3, 0.1, 0.1], 0.85, 3),
        ([0.5, 0.3, 0.1, 0.1], 1.0, 4),
        ([0.25] * 4, 0.0, 1),
    ],
)
def test_fewest_top_filters_reaching_the_mass(masses, tau, expected):
    assert width_for_mass(_cumulative(masses), tau, k_min=1, round_to=1) == expected


def test_k_min_and_round_to():
    cumulative = _cumulative([1 / 32] * 32)
    assert width_for_mass(cumulative, 0.01, k_min=3, round_to=1) == 3
    assert width_for_mass(cumulative, 0.3, k_min=1, round_to=8) == 16  # 10 rounds up to 16
    assert width_for_mass(cumulative, 0.99, k_min=1, round_to=8) == 32
    assert width_for_mass(_cumulative([0.2] * 5), 0.5, k_min=1, round_to=8) == 5  # capped


def test_group_scores_keep_the_heaviest_filters_in_order():
    scores = GroupScores.of(torch.tensor([0.0, 3.0, -1.0, 2.0]))
    assert scores.keep(2).tolist() == [1, 3]
    assert float(scores.cumulative[-1]) == pytest.approx(1.0)


def test_gumbel_perturbation_is_seeded_and_off_at_zero():
    alpha = torch.zeros(16)
    a = gumbel_perturb(alpha, 1.0, torch.Generator().manual_seed(3))
    b = gumbel_perturb(alpha, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.std() > 0
    assert torch.equal(gumbel_perturb(alpha, 0.0, torch.Generator()), alpha)


def _sampler(name="resnet20", round_to=1, prune_coupled=True):
    model = create_model(name, num_classes=10, in_channels=3, input_size=32)
    layout = model.channel_layout()
    flops = FlopsModel(model, layout, (3, 32, 32))
    return Sampler(flops, layout.prunable_groups(prune_coupled), k_min=1, round_to=round_to), layout


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    budget=st.floats(0.2, 1.0),
    round_to=st.sampled_from([1, 4, 8]),
    scale=st.floats(0.0, 5.0),
)
def test_every_candidate_meets_the_budget(seed, budget, round_to, scale):
    sampler, layout = _sampler(round_to=round_to)
    generator = torch.Generator().manual_seed(seed)
    scores = {
        g: GroupScores.of(torch.randn(layout.groups[g].width, generator=generator) * scale)
        for g in sampler.groups
    }
    tau = {g: float(torch.rand(1, generator=generator)) * 0.95 + 0.05 for g in sampler.groups}
    _, widths = sampler.project(scores, tau, budget)
    assert sampler.flops.ratio(widths) <= budget + 1e-12
    # maximal: no group can grow by one more step without breaking the budget
    dense = sampler.flops.dense_widths
    for g in sampler.groups:
        if widths[g] < dense[g]:
            grown = {**widths, g: min(dense[g], widths[g] + round_to)}
            assert sampler.flops.ratio(grown) > budget
    if round_to > 1:
        dense = sampler.flops.dense_widths
        assert all(widths[g] % round_to == 0 or widths[g] == dense[g] for g in sampler.groups)


@pytest.mark.parametrize("budget", [0.3, 0.5])
@pytest.mark.parametrize("seed", range(5))
def test_candidates_use_the_budget_within_one_point(budget, seed):
    sampler, layout = _sampler("resnet56")
    generator = torch.Generator().manual_seed(seed)
    scores = {
        g: GroupScores.of(torch.randn(layout.groups[g].width, generator=generator))
        for g in sampler.groups
    }
    tau = {g: float(torch.rand(1, generator=generator)) * 0.9 + 0.1 for g in sampler.groups}
    _, widths = sampler.project(scores, tau, budget)
    assert budget - 0.01 <= sampler.flops.ratio(widths) <= budget


def test_projection_keeps_unprunable_groups_whole():
    sampler, layout = _sampler(prune_coupled=False)
    scores = {g: GroupScores.of(torch.zeros(layout.groups[g].width)) for g in sampler.groups}
    _, widths = sampler.project(scores, {g: 1.0 for g in sampler.groups}, 0.7)
    for name, group in layout.groups.items():
        if group.coupled:
            assert widths[name] == group.width
