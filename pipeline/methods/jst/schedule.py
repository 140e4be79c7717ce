"""Coarse-to-fine schedules of the JST search (iterations t = 1..K)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config import SearchConfig


@dataclass(frozen=True)
class Schedule:
    iterations: int
    target: float  # final kept-FLOPs budget B
    anneal_fraction: float  # rho
    warmup_epochs: float
    first_epochs: float  # E_1
    epoch_decay: float  # E_K / E_1
    lr: float
    lr_decay: float  # lr at the end / lr at the start
    sigma_start: float
    sigma_min: float
    delta: float
    frozen_iterations: int  # the last ones train one fixed architecture

    @classmethod
    def from_config(cls, search: SearchConfig, target: float | None = None) -> Schedule:
        """The schedule of ``search``; ``target`` is the final budget (default: its
        FLOPs target)."""
        j = search.jst
        iteration_epochs = search.epochs - j.warmup_epochs  # > 0: SearchConfig checks it
        # sum_t E_t = E_1 * K * (1 + decay) / 2 for a linear decay
        first = iteration_epochs / (j.iterations * (1 + j.epoch_decay) / 2)
        sigma_start = j.sigma_start if j.perturbation else 0.0
        sigma_min = j.sigma_min if j.perturbation else 0.0
        return cls(
            j.iterations,
            search.target_flops if target is None else target,
            j.anneal_fraction,
            j.warmup_epochs,
            first,
            j.epoch_decay,
            search.lr,
            j.lr_decay,
            sigma_start,
            sigma_min,
            j.delta,
            min(j.iterations - 1, round(j.freeze_fraction * j.iterations)),
        )

    def progress(self, t: int) -> float:
        return (t - 1) / max(1, self.iterations - 1)

    def frozen(self, t: int) -> bool:
        """The architecture is fixed from here on; its network trains without restarts."""
        return t > self.iterations - self.frozen_iterations

    def budget(self, t: int) -> float:
        """B_t = 1 - (1 - B) * min(1, t / (rho K)): anneals from dense to the target, and
        is the target once the architecture is frozen."""
        if self.anneal_fraction == 0 or self.frozen(t):
            return self.target
        return 1 - (1 - self.target) * min(1.0, t / (self.anneal_fraction * self.iterations))

    def epochs(self, t: int) -> float:
        return self.first_epochs * (1 + (self.epoch_decay - 1) * self.progress(t))

    @property
    def total_epochs(self) -> float:
        return self.warmup_epochs + sum(self.epochs(t) for t in range(1, self.iterations + 1))

    def epochs_before(self, t: int) -> float:
        """Epochs spent (warm-up included) when iteration t starts."""
        return self.warmup_epochs + sum(self.epochs(s) for s in range(1, t))

    def lr_factor(self, epoch: float) -> float:
        """One cosine over the whole search, warm-up included, from 1 to ``lr_decay``:
        the learning rate never falls to zero and restarts."""
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / self.total_epochs)))
        return self.lr_decay + (1 - self.lr_decay) * cosine

    def learning_rate(self, t: int) -> float:
        """Constant within iteration t: the global curve at the iteration's midpoint."""
        return self.lr * self.lr_factor(self.epochs_before(t) + self.epochs(t) / 2)

    def sigma(self, t: int) -> float:
        return self.sigma_start + (self.sigma_min - self.sigma_start) * self.progress(t)

    def step_size(self, t: int) -> float:
        """delta_t: threshold moves halve over the search."""
        return self.delta * (1 - 0.5 * self.progress(t))
