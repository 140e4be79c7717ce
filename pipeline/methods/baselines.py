"""The classic baselines JST is compared against (see docs/method.md, "Baselines").

- ``scratch``: the uniformly thinned network trained from scratch (Liu et al. 2019).
- ``l1``: pre-train dense, drop the filters of smallest L1 norm, one ratio per layer
  (Li et al. 2017).
- ``slimming``: pre-train with L1 sparsity on BN gammas, drop channels under one global
  gamma threshold (Liu et al. 2017).
- ``random``: as ``l1`` with random filter scores.
Each meets the FLOPs budget from below, within one percentage point.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from pipeline.methods.base import (
    DenseSetup,
    SearchContext,
    SearchResult,
    budget_summary,
    compact_from_dense,
    dense_setup,
    register_method,
    train_phase,
)
from pipeline.pruning.budget import uniform_budget_widths
from pipeline.pruning.importance import (
    BNScaleImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
)
from pipeline.pruning.slicing import build_model
from pipeline.train import Regularizer, calibration_batches, recalibrate_bn

# Training batches that re-estimate the BN statistics of a freshly sliced model: the dense
# model's statistics describe other channels' sums, and evaluating with them gives chance.
RECALIBRATION_BATCHES = 10


@register_method("scratch")
def scratch(ctx: SearchContext) -> SearchResult:
    setup = dense_setup(ctx)
    s, budget = ctx.config.search, setup.budget
    widths = uniform_budget_widths(budget.cost, setup.groups, budget.target, s.k_min, s.round_to)
    return train_from_scratch(ctx, widths, setup=setup)


def train_from_scratch(
    ctx: SearchContext,
    widths: dict[str, int],
    name: str = "scratch",
    *,
    setup: DenseSetup | None = None,
) -> SearchResult:
    """Build ``widths`` freshly initialised and train them for search.epochs. ``scratch``
    uses it with uniform widths; benchmarks use it to retrain a found architecture, which
    separates how good an architecture is from how well a search trained its weights."""
    setup = setup or dense_setup(ctx)
    spec = replace(setup.spec, widths=dict(widths))
    torch.manual_seed(ctx.config.seed)
    model = build_model(spec).to(ctx.device)
    history = train_phase(ctx, model, name, setup.flops.ratio(spec.widths))
    return SearchResult(spec, model, setup.spec, history, budget_summary(setup, spec))


def prune_pretrained(
    ctx: SearchContext,
    criterion: Importance,
    name: str,
    *,
    regularizer: Regularizer | None = None,
) -> SearchResult:
    """Pre-train the dense network (with ``regularizer`` added to its loss), keep the
    channels ``criterion`` ranks highest within the budget, and give the sliced network
    BN statistics of its own."""
    setup = dense_setup(ctx)
    s, budget = ctx.config.search, setup.budget
    setup.model.to(ctx.device)
    history = train_phase(ctx, setup.model, f"{name}_pretrain", 1.0, regularizer=regularizer)
    keep = criterion.kept_channels(
        setup.model, setup.layout, budget.cost, setup.groups, budget.target, s.k_min, s.round_to
    )
    spec, compact = compact_from_dense(setup, keep)
    recalibrate_bn(
        compact,
        calibration_batches(
            ctx.data, ctx.config.train, ctx.config.seed, ctx.device, RECALIBRATION_BATCHES
        ),
    )
    return SearchResult(spec, compact, setup.spec, history, budget_summary(setup, spec))


@register_method("l1")
def l1(ctx: SearchContext) -> SearchResult:
    return prune_pretrained(ctx, MagnitudeImportance(), "l1")


@register_method("random")
def random_filters(ctx: SearchContext) -> SearchResult:
    return prune_pretrained(ctx, RandomImportance(ctx.config.seed + 1), "random")


@register_method("slimming")
def slimming(ctx: SearchContext) -> SearchResult:
    sparsity = gamma_l1(ctx.config.search.slimming.sparsity)
    return prune_pretrained(ctx, BNScaleImportance(), "slimming", regularizer=sparsity)


def gamma_l1(strength: float) -> Regularizer:
    """Network slimming's sparsity loss: ``strength`` times the L1 norm of every BN's
    gamma, which drives the gammas of unneeded channels towards zero while pre-training."""

    def loss(model: nn.Module) -> torch.Tensor:
        return strength * sum(
            m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
        )

    return loss
