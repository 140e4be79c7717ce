"""Choosing group widths that meet a budget: FLOPs, or latency on the deployment runtime.

All baselines end in the same place: widths whose FLOPs ratio is at most the target and
within ``tolerance`` of it. Coarse choices (one ratio for every layer, one global
threshold) overshoot or undershoot by whole channels, so each is followed by a greedy
fill that adds single channels, best-first, while the budget still holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from pipeline.errors import PipelineError
from pipeline.pruning.flops import FlopsModel

Widths = dict[str, int]


def round_width(width: float, dense: int, k_min: int, round_to: int = 1) -> int:
    """Round a fractional width down to a multiple of ``round_to``, within [k_min, dense].

    The floor is ``k_min`` rounded up to a multiple of ``round_to``; a dense width that is
    not a multiple itself can still be kept whole.
    """
    if width >= dense:
        return dense
    floor = min(dense, math.ceil(k_min / round_to) * round_to)
    return max(floor, int(math.floor(width / round_to)) * round_to)


def uniform_widths(
    flops: FlopsModel, groups: Sequence[str], ratio: float, k_min: int, round_to: int = 1
) -> Widths:
    widths = dict(flops.dense_widths)
    for g in groups:
        widths[g] = round_width(
            ratio * flops.dense_widths[g], flops.dense_widths[g], k_min, round_to
        )
    return widths


def bisect(predicate: Callable[[float], bool], lo: float = 0.0, hi: float = 1.0, steps: int = 40):
    """Largest x in [lo, hi] with predicate(x) true, for a monotone predicate."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predicate(mid) else (lo, mid)
    return lo


def check_feasible(flops: FlopsModel, groups: Sequence[str], target: float, k_min: int, round_to=1):
    smallest = uniform_widths(flops, groups, 0.0, k_min, round_to)
    floor_ratio = flops.ratio(smallest)
    if floor_ratio > target:
        knob = f"search.target_{flops.name}"
        raise PipelineError(
            f"{knob}={target} cannot be met: even keeping only k_min={k_min} channels per "
            f"prunable group keeps {floor_ratio:.3f} of the {flops.name}. Raise {knob}, "
            "lower search.k_min or search.round_to, or set search.prune_residual: true."
        )


def fill_to_budget(
    flops: FlopsModel,
    widths: Widths,
    priority: Callable[[str, int], float],
    groups: Sequence[str],
    target: float,
    round_to: int = 1,
) -> Widths:
    """Add channels (``round_to`` at a time), highest priority first, while they fit."""
    widths = dict(widths)
    budget = target * flops.dense_cost
    while True:
        candidates = []
        for g in groups:
            if widths[g] >= flops.dense_widths[g]:
                continue
            grown = min(widths[g] + round_to, flops.dense_widths[g])
            trial = {**widths, g: grown}
            if flops(trial) <= budget:
                candidates.append((priority(g, widths[g]), g))
        if not candidates:
            return widths
        _, best = max(candidates)
        widths[best] = min(widths[best] + round_to, flops.dense_widths[best])


def uniform_budget_widths(
    flops: FlopsModel, groups: Sequence[str], target: float, k_min: int, round_to: int = 1
) -> Widths:
    """One keep ratio for every prunable group, scaled to meet the budget, then filled."""
    check_feasible(flops, groups, target, k_min, round_to)
    ratio = bisect(
        lambda r: flops.ratio(uniform_widths(flops, groups, r, k_min, round_to)) <= target
    )
    widths = uniform_widths(flops, groups, ratio, k_min, round_to)

    def least_kept_first(group: str, width: int) -> float:
        return -width / flops.dense_widths[group]

    return fill_to_budget(flops, widths, least_kept_first, groups, target, round_to)


def global_threshold_widths(
    flops: FlopsModel,
    scores: dict[str, torch.Tensor],
    groups: Sequence[str],
    target: float,
    k_min: int,
    round_to: int = 1,
) -> Widths:
    """Keep channels whose score passes one global threshold, set to meet the budget.

    Scores are compared across groups (network slimming's rule); the threshold is the
    lowest one that fits, then single channels are added by score while FLOPs allow.
    """
    check_feasible(flops, groups, target, k_min, round_to)
    ranked = {g: torch.sort(scores[g].float(), descending=True).values for g in groups}

    def widths_at(threshold: float) -> Widths:
        widths = dict(flops.dense_widths)
        for g in groups:
            passing = int((ranked[g] > threshold).sum())
            widths[g] = round_width(passing, flops.dense_widths[g], k_min, round_to)
        return widths

    top = max(float(r[0]) for r in ranked.values())
    fraction = bisect(lambda f: flops.ratio(widths_at(top * (1 - f))) <= target)
    widths = widths_at(top * (1 - fraction))

    def next_channel_score(group: str, width: int) -> float:
        return float(ranked[group][width]) if width < len(ranked[group]) else -math.inf

    return fill_to_budget(flops, widths, next_channel_score, groups, target, round_to)
