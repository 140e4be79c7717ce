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

from pipeline.errors import ConfigError
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


def check_feasible(
    cost: FlopsModel,
    groups: Sequence[str],
    target: float,
    k_min: int,
    round_to: int = 1,
    *,
    model: str | None = None,
    residual_groups: Sequence[str] = (),
    left_whole: Callable[[], Sequence[str]] | None = None,
) -> None:
    """Refuse a budget that no choice of widths can meet, before any work, saying why.

    ``cost`` is the budget's cost model (FLOPs or latency: ``cost.name``), ``groups`` the
    groups the method may prune. ``model`` names the model in the message;
    ``residual_groups`` are the coupled groups that ``search.prune_residual: true`` would add
    (empty when it is true already): the message suggests it only when they would lower
    the floor. ``left_whole`` lists, when asked (only on failure: it may trace the model),
    the channels the model leaves whole and why.
    """
    knob = f"search.target_{cost.name}"
    subject = f"model {model!r}" if model else "the model"
    if not groups:
        check_anything_prunable(groups, target, knob, model, residual_groups, left_whole)
        return
    floor_ratio = cost.ratio(uniform_widths(cost, groups, 0.0, k_min, round_to))
    if floor_ratio <= target:
        return
    fixes = [f"raise {knob} to {math.ceil(floor_ratio * 1000) / 1000:.3f} or more"]
    coarse = [
        f"search.{knob_name} (now {value})"
        for knob_name, value in (("k_min", k_min), ("round_to", round_to))
        if value > 1
    ]
    if coarse:
        finest = cost.ratio(uniform_widths(cost, groups, 0.0, 1, 1))
        if finest < floor_ratio:
            fixes.append(f"lower {' or '.join(coarse)}: at 1 the floor is {finest:.3f}")
    if residual_groups:
        every = [*groups, *(g for g in residual_groups if g not in groups)]
        with_residual = cost.ratio(uniform_widths(cost, every, 0.0, k_min, round_to))
        if with_residual < floor_ratio:
            fixes.append(
                "set search.prune_residual: true (it adds the residual groups: the floor "
                f"becomes {with_residual:.3f})"
            )
    whole = ""
    if left_whole is not None and (reasons := list(left_whole())):
        whole = f" Left whole: {_first_few(reasons)}."
    raise ConfigError(
        f"{knob}={target} cannot be met for {subject}: even with each of its {len(groups)} "
        f"prunable channel group(s) cut to its floor (search.k_min={k_min} rounded up to "
        f"search.round_to={round_to}) it keeps {floor_ratio:.3f} of the {_measure(cost)}, since "
        f"the rest of the network is never pruned.{whole} To fix: {'; or '.join(fixes)}."
    )


def check_anything_prunable(
    groups: Sequence[str],
    target: float,
    knob: str,
    model: str | None = None,
    residual_groups: Sequence[str] = (),
    left_whole: Callable[[], Sequence[str]] | None = None,
) -> None:
    """Refuse a budget below 1 (``knob``'s value ``target``) when ``groups`` is empty:
    every method would keep the dense network. Needs no cost model, so a latency budget
    is refused before its latency model is measured."""
    if groups or target >= 1:
        return
    subject = f"model {model!r}" if model else "the model"
    if residual_groups:
        why = (
            f"its only channel groups ({len(residual_groups)}) are joined by residual "
            "additions and search.prune_residual is false"
        )
        fix = "set search.prune_residual: true, or choose another model"
    else:
        why = "it has no channel group that can be pruned exactly"
        fix = "choose another model (`jst models` lists those verified)"
    reasons = list(left_whole()) if left_whole is not None else []
    if reasons:
        why += f"; left whole: {_first_few(reasons)}"
    raise ConfigError(
        f"{knob}={target} cannot be met for {subject}: nothing in it is prunable ({why}), "
        f"so every method would keep the dense network. {fix[0].upper()}{fix[1:]}."
    )


def _measure(cost) -> str:
    return "FLOPs" if cost.name == "flops" else cost.name


def _first_few(items: Sequence[str], shown: int = 3) -> str:
    more = len(items) - shown
    return "; ".join(items[:shown]) + (f"; and {more} more" if more > 0 else "")


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
