"""Width selection meets the FLOPs budget from below, within one percentage point."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError
from pipeline.models import create_model
from pipeline.pruning.budget import (
    global_threshold_widths,
    round_width,
    uniform_budget_widths,
)
from pipeline.pruning.flops import FlopsModel


def _flops(name="resnet20", size=32):
    model = create_model(name, num_classes=10, in_channels=3, input_size=size)
    layout = model.channel_layout()
    return FlopsModel(model, layout, (3, size, size)), layout


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_uniform_meets_budget_within_one_point(name, target):
    flops, layout = _flops(name)
    widths = uniform_budget_widths(flops, list(layout.groups), target, k_min=1)
    assert target - 0.01 <= flops.ratio(widths) <= target


@settings(max_examples=20, deadline=None)
@given(target=st.floats(0.1, 1.0), seed=st.integers(0, 1000))
def test_global_threshold_meets_budget(target, seed):
    flops, layout = _flops("resnet20")
    generator = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(g.width, generator=generator) for n, g in layout.groups.items()}
    widths = global_threshold_widths(flops, scores, list(layout.groups), target, k_min=1)
    assert flops.ratio(widths) <= target + 1e-12
    # Full: no group can take one more channel within the budget. (Not "within 0.01 of
    # the target": one channel of a coupled residual group can cost more than 1 %.)
    for g, w in widths.items():
        if w < flops.dense_widths[g]:
            assert flops.ratio({**widths, g: w + 1}) > target, g


def test_unprunable_groups_keep_their_width():
    flops, layout = _flops("resnet20")
    inner = layout.prunable_groups(prune_coupled=False)
    widths = uniform_budget_widths(flops, inner, 0.7, k_min=1)
    for name, g in layout.groups.items():
        if g.coupled:
            assert widths[name] == g.width


def test_infeasible_budget_says_how_to_fix():
    flops, layout = _flops("resnet20")
    with pytest.raises(PipelineError, match="search.target_flops"):
        uniform_budget_widths(flops, layout.prunable_groups(False), 0.05, k_min=1)


@pytest.mark.parametrize(
    ("width", "dense", "k_min", "round_to", "expected"),
    [
        (5.7, 16, 1, 1, 5),
        (0.2, 16, 2, 1, 2),
        (13.0, 16, 1, 8, 8),
        (3.0, 16, 1, 8, 8),
        (40.0, 16, 1, 1, 16),
        (9.0, 12, 1, 8, 8),
        (3.0, 4, 1, 8, 4),
    ],
)
def test_round_width(width, dense, k_min, round_to, expected):
    assert round_width(width, dense, k_min, round_to) == expected


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_gives_multiples_and_meets_budget(round_to):
    flops, layout = _flops("resnet56")
    widths = uniform_budget_widths(flops, list(layout.groups), 0.5, 1, round_to)
    assert all(w % round_to == 0 for w in widths.values())
    assert 0.49 <= flops.ratio(widths) <= 0.5
    generator = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(g.width, generator=generator) for n, g in layout.groups.items()}
    widths = global_threshold_widths(flops, scores, list(layout.groups), 0.3, 1, round_to)
    assert all(w % round_to == 0 for w in widths.values())
    assert 0.29 <= flops.ratio(widths) <= 0.3
