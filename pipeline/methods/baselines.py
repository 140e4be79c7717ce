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
from pipeline.pruning.budget import global_threshold_widths, uniform_budget_widths
from pipeline.pruning.groups import bn_gamma_scores, filter_l1_scores, indices_from_scores
from pipeline.pruning.slicing import build_model
from pipeline.train import calibration_batches, recalibrate_bn

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


def _prune_pretrained(ctx: SearchContext, scores_of, name: str, *, regularizer=None):
    setup = dense_setup(ctx)
    s, budget = ctx.config.search, setup.budget
    setup.model.to(ctx.device)
    history = train_phase(ctx, setup.model, f"{name}_pretrain", 1.0, regularizer=regularizer)
    scores = scores_of(setup)
    if name == "slimming":
        widths = global_threshold_widths(
            budget.cost, scores, setup.groups, budget.target, s.k_min, s.round_to
        )
    else:
        widths = uniform_budget_widths(
            budget.cost, setup.groups, budget.target, s.k_min, s.round_to
        )
    keep = indices_from_scores(scores, widths)
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
    return _prune_pretrained(ctx, lambda setup: filter_l1_scores(setup.model, setup.layout), "l1")


@register_method("random")
def random_filters(ctx: SearchContext) -> SearchResult:
    def random_scores(setup):
        generator = torch.Generator().manual_seed(ctx.config.seed + 1)
        return {n: torch.rand(g.width, generator=generator) for n, g in setup.layout.groups.items()}

    return _prune_pretrained(ctx, random_scores, "random")


@register_method("slimming")
def slimming(ctx: SearchContext) -> SearchResult:
    strength = ctx.config.search.slimming.sparsity

    def gamma_l1(model):
        return strength * sum(
            m.weight.abs().sum() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
        )

    return _prune_pretrained(
        ctx,
        lambda setup: bn_gamma_scores(setup.model, setup.layout),
        "slimming",
        regularizer=gamma_l1,
    )
