"""The statistics every published comparison uses: per-seed pairs, a two-sided paired
t-test and its 95 % interval. A difference is a win or a loss only where the test says so."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

ALPHA = 0.05  # two-sided significance level of every claimed win or loss
MIN_SEEDS = 3  # fewer pairs than this are reported, never tested


@dataclass(frozen=True)
class PairedDifference:
    """Mean, std and 95 % interval of per-seed differences (a − b), with the paired
    t-test's two-sided p-value (None when there are fewer than MIN_SEEDS pairs)."""

    diffs: tuple[float, ...]
    mean: float
    std: float
    low: float | None
    high: float | None
    p: float | None

    @property
    def verdict(self) -> str:
        """``win``, ``loss``, ``within noise``, or ``n < 3: not tested``."""
        if self.p is None:
            return f"n < {MIN_SEEDS}: not tested"
        if self.p >= ALPHA:
            return "within noise"
        return "win" if self.mean > 0 else "loss"

    def interval(self) -> str:
        if self.low is None:
            return "–"
        return f"[{self.low:+.2f}, {self.high:+.2f}]"

    def p_text(self) -> str:
        return "–" if self.p is None else f"{self.p:.3f}"


def mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(a: list[float], b: list[float]) -> PairedDifference:
    """Paired by position: a[i] and b[i] come from one seed (one data split)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many paired values, got {len(a)} and {len(b)}")
    diffs = tuple(x - y for x, y in zip(a, b, strict=True))
    mean, std = mean_std(diffs)
    if len(diffs) < MIN_SEEDS:
        return PairedDifference(diffs, mean, std, None, None, None)
    sem = std / math.sqrt(len(diffs))
    half = scipy_stats.t.ppf(1 - ALPHA / 2, len(diffs) - 1) * sem
    if sem == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * scipy_stats.t.sf(abs(mean / sem), len(diffs) - 1))
    return PairedDifference(diffs, mean, std, mean - half, mean + half, p)
