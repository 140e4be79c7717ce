"""Channel importance criteria: which channels, and how many per group, a pruning keeps.

As with Torch-Pruning's ``Importance`` classes, a criterion is a small callable object:
``criterion(model, layout)`` scores every channel of every group (higher: keep). Whether
its scores compare across groups sets how many channels each group keeps under a budget:
one global threshold if they do, else one keep ratio for every group. Adding a criterion
is one subclass; the baselines name no criterion.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.pruning.budget import Widths, global_threshold_widths, uniform_budget_widths
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.groups import ChannelLayout, KeptChannels, indices_from_scores

Scores = dict[str, torch.Tensor]


class Importance(ABC):
    """A channel importance criterion: subclasses score, and say whether their scores
    compare across groups."""

    # False: scores of different groups do not compare (filter norms of layers of other
    # shapes), so every prunable group keeps one ratio (Li et al. 2017). True: one global
    # threshold on the scores decides every group's width (network slimming).
    global_threshold = False

    @abstractmethod
    def __call__(self, model: nn.Module, layout: ChannelLayout) -> Scores:
        """Every group's channel scores (higher: keep)."""

    def widths(
        self,
        cost: FlopsModel,
        scores: Scores,
        groups: Sequence[str],
        target: float,
        k_min: int,
        round_to: int = 1,
    ) -> Widths:
        """How many channels each group keeps under the budget ``cost.ratio <= target``."""
        if self.global_threshold:
            return global_threshold_widths(cost, scores, groups, target, k_min, round_to)
        return uniform_budget_widths(cost, groups, target, k_min, round_to)

    def kept_channels(
        self,
        model: nn.Module,
        layout: ChannelLayout,
        cost: FlopsModel,
        groups: Sequence[str],
        target: float,
        k_min: int,
        round_to: int = 1,
    ) -> KeptChannels:
        """The highest-scoring channels of every group, as many as ``widths`` allows."""
        scores = self(model, layout)
        groups = self.scorable(layout, groups)
        return indices_from_scores(
            scores, self.widths(cost, scores, groups, target, k_min, round_to)
        )

    def scorable(self, layout: ChannelLayout, groups: Sequence[str]) -> list[str]:
        """The ``groups`` this criterion can rank; the others keep every channel."""
        return list(groups)


class MagnitudeImportance(Importance):
    """L1 norm of each output filter, summed over a group's scored convs (Li et al. 2017)."""

    def __call__(self, model: nn.Module, layout: ChannelLayout) -> Scores:
        modules = dict(model.named_modules())
        scores = {}
        for name, g in layout.groups.items():
            total = torch.zeros(g.width)
            for conv in g.scored_convs:
                norms = modules[conv].weight.detach().cpu().abs().flatten(1).sum(1)
                total += norms.view(g.tiles, g.width).sum(0)  # a position, in every tile
            scores[name] = total
        return scores


class BNScaleImportance(Importance):
    """Mean |gamma| over a group's scored BNs (network slimming, Liu et al. 2017). After BN
    every channel has unit scale, so gammas of different layers compare.

    A group no BN carries (gated on its producers' outputs: AlexNet's convs, classifier
    hidden layers, SE squeezes) has no gamma to score: slimming keeps it whole and warns,
    naming it; l1, random and jst prune it."""

    global_threshold = True

    def __call__(self, model: nn.Module, layout: ChannelLayout) -> Scores:
        modules = dict(model.named_modules())
        scores = {}
        for name, g in layout.groups.items():
            if not g.scored_bns:  # not ranked (scorable): every channel alike
                scores[name] = torch.ones(g.width)
                continue
            gammas = [modules[bn].weight.detach().abs().cpu() for bn in g.scored_bns]
            scores[name] = torch.stack(gammas).view(len(gammas), g.tiles, g.width).mean((0, 1))
        return scores

    def scorable(self, layout: ChannelLayout, groups: Sequence[str]) -> list[str]:
        unscorable = unscorable_groups(layout, groups)
        if unscorable:
            warnings.warn(
                f"network slimming cannot score {len(unscorable)} channel group(s) no "
                f"BatchNorm carries ({', '.join(unscorable[:8])}"
                f"{', ...' if len(unscorable) > 8 else ''}): they stay whole and the budget "
                "is met by the others; search.method l1, random or jst prunes them too.",
                RuntimeWarning,
                stacklevel=3,
            )
        return [g for g in groups if g not in unscorable]


def unscorable_groups(layout: ChannelLayout, groups: Sequence[str]) -> list[str]:
    """The ``groups`` that have no BN gamma to score them (network slimming's criterion)."""
    return [g for g in groups if not layout.groups[g].scored_bns]


@dataclass(frozen=True)
class RandomImportance(Importance):
    """Random scores from a generator of their own (the global RNG is not touched)."""

    seed: int

    def __call__(self, model: nn.Module, layout: ChannelLayout) -> Scores:
        generator = torch.Generator().manual_seed(self.seed)
        return {n: torch.rand(g.width, generator=generator) for n, g in layout.groups.items()}
