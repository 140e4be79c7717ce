"""Sampling sub-networks from filter weights, and projecting them onto the budget.

Given (perturbed) filter weights alpha_g of a group, the sampler keeps the fewest
top-scoring filters whose cumulative ``softmax(alpha_g)`` mass reaches the group's
keep-mass tau_g (at least ``k_min``, rounded up to ``round_to``). The budget projection
scales every tau_g by one global factor, found by bisection, so that each candidate's
FLOPs meet the current budget: the policy decides how the budget is *distributed*,
never whether it is met. Whatever a single factor leaves unspent (widths move in whole
``round_to`` steps) is filled greedily with the most important remaining filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.pruning.budget import fill_to_budget
from pipeline.pruning.flops import FlopsModel


def gumbel_perturb(alpha: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """alpha + sigma * G with G ~ Gumbel(0, 1), i.i.d. per filter (Monte-Carlo exploration)."""
    if sigma <= 0:
        return alpha.clone()
    u = torch.rand(alpha.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return alpha + sigma * gumbel.to(alpha.dtype)


def width_for_mass(cumulative: torch.Tensor, tau: float, k_min: int, round_to: int) -> int:
    """Fewest top filters whose cumulative mass reaches ``tau`` (then k_min, round_to)."""
    dense = len(cumulative)
    # a tiny slack so that tau = 1 keeps everything despite float rounding of the sum
    k = int(torch.searchsorted(cumulative, torch.tensor(tau - 1e-9, dtype=cumulative.dtype))) + 1
    k = max(k, k_min)
    if round_to > 1:
        k = math.ceil(k / round_to) * round_to
    return min(k, dense)


@dataclass
class GroupScores:
    """A group's filters ranked by (perturbed) weight, with their cumulative mass."""

    order: torch.Tensor  # filter indices, best first
    cumulative: torch.Tensor  # cumulative softmax mass along ``order``

    @classmethod
    def of(cls, alpha: torch.Tensor) -> GroupScores:
        mass = torch.softmax(alpha.double(), dim=0)
        sorted_mass, order = torch.sort(mass, descending=True, stable=True)
        return cls(order, torch.cumsum(sorted_mass, dim=0))

    def keep(self, width: int) -> torch.Tensor:
        return torch.sort(self.order[:width]).values


class Sampler:
    """Turns per-group keep-masses into widths and kept filter indices."""

    def __init__(self, flops: FlopsModel, groups: list[str], k_min: int, round_to: int):
        self.flops = flops
        self.groups = groups
        self.k_min = k_min
        self.round_to = round_to

    def widths(self, scores: dict[str, GroupScores], tau: dict[str, float]) -> dict[str, int]:
        widths = dict(self.flops.dense_widths)
        for g in self.groups:
            widths[g] = width_for_mass(scores[g].cumulative, tau[g], self.k_min, self.round_to)
        return widths

    def project(
        self, scores: dict[str, GroupScores], tau: dict[str, float], budget: float, steps: int = 40
    ) -> tuple[dict[str, float], dict[str, int]]:
        """Scale all tau_g by the largest global factor whose widths meet ``budget``.

        Returns the projected keep-masses and the widths they give. FLOPs grow
        monotonically with the factor, so bisection finds it.
        """

        def scaled(factor: float) -> dict[str, float]:
            return {g: min(1.0, factor * tau[g]) for g in self.groups}

        def fits(factor: float) -> bool:
            return self.flops.ratio(self.widths(scores, scaled(factor))) <= budget

        hi = 1.0 / max(1e-6, min(tau[g] for g in self.groups))
        if fits(hi):
            lo = hi
        else:
            lo = 0.0
            for _ in range(steps):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        projected = scaled(lo)
        return projected, self._fill(scores, self.widths(scores, projected), budget)

    def _fill(self, scores, widths: dict[str, int], budget: float) -> dict[str, int]:
        """Spend what one global factor leaves (whole ``round_to`` steps are coarse):
        add filters, most important first, while the budget holds. Importance is the next
        filter's mass relative to a uniform group (mass x width), so groups compare."""

        def next_mass(group: str, width: int) -> float:
            cumulative = scores[group].cumulative
            if width >= len(cumulative):
                return -math.inf
            previous = cumulative[width - 1] if width > 0 else 0.0
            return float(cumulative[width] - previous) * len(cumulative)

        return fill_to_budget(self.flops, widths, next_mass, self.groups, budget, self.round_to)

    def keep_indices(self, scores: dict[str, GroupScores], widths: dict[str, int]):
        return {
            g: scores[g].keep(widths[g]) if g in scores else torch.arange(widths[g]) for g in widths
        }
