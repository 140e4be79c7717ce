"""Joint search-and-training (JST): the compact network is learned, not pruned after.

Each iteration draws N candidate sub-networks from the target network's filter weights
alpha (Gumbel-perturbed; per-group keep-masses set by a learned threshold policy and
projected onto the current budget), scores them cheaply on validation batches, trains the
best one physically built (its gates alpha learned in the same steps as its weights),
re-estimates its BN statistics, and writes weights, BN statistics and alpha back into the
target. The last iterations train one frozen architecture without restarts. See
docs/method.md; the numbered steps below follow it.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from pipeline import distributed
from pipeline.artifacts import load_state_dict_with_versions
from pipeline.checkpoint import Checkpoint
from pipeline.data import ImageSplit, PreparedData
from pipeline.errors import TrainingDiverged
from pipeline.methods.base import (
    DenseSetup,
    SearchContext,
    SearchResult,
    budget_summary,
    dense_setup,
    register_method,
)
from pipeline.methods.jst.gates import (
    Alphas,
    WeightsAndGates,
    gates_of,
    learnable_gates,
    load_momenta,
    polarisation,
)
from pipeline.methods.jst.policy import PolicyLearner, group_state
from pipeline.methods.jst.sampler import GroupScores, Sampler, gumbel_perturb
from pipeline.methods.jst.schedule import Schedule
from pipeline.progress import console, epoch_progress
from pipeline.pruning.gates import fold_gates, gated
from pipeline.pruning.groups import KeptChannels
from pipeline.pruning.slicing import build_model, scatter_weights, slice_weights, spec_for_indices
from pipeline.train import (
    DivergenceCheck,
    diverged_at,
    endless,
    evaluate,
    make_loader,
    make_optimizer,
    recalibrate_bn,
    train,
    train_steps,
)


@register_method("jst")
def jst(ctx: SearchContext) -> SearchResult:
    return JointSearch(ctx).run()


@dataclass
class Candidate:
    keep: KeptChannels
    widths: dict[str, int]
    tau: dict[str, float]  # projected keep-masses
    decision: object | None
    budget_ratio: float  # of the budget's cost model: FLOPs or latency
    score: float | None = None  # None: not scored (nothing to choose between)
    reward: float | None = None


def data_fingerprint(data: PreparedData) -> str:
    digest = hashlib.sha256()
    for split in (data.train, data.val):
        digest.update(split.fingerprint())
    return digest.hexdigest()[:16]


class JointSearch:
    def __init__(self, ctx: SearchContext):
        self.ctx = ctx
        cfg, self.search_cfg, self.jst = ctx.config, ctx.config.search, ctx.config.search.jst
        self.device = ctx.device
        self.setup: DenseSetup = dense_setup(ctx)
        self.budget = self.setup.budget  # FLOPs or latency: what candidates are projected on
        self.schedule = Schedule.from_config(self.search_cfg, self.budget.target)
        s = self.search_cfg  # dense_setup has refused a budget no widths can meet
        self.setup.model.to(self.device)
        self.groups = self.setup.groups
        self.sampler = Sampler(self.budget.cost, self.groups, s.k_min, s.round_to)
        self.data = ctx.data  # weights and gates train on data.train; candidates score on val
        self.alpha = {g: torch.zeros(self.setup.layout.groups[g].width) for g in self.groups}
        self.gates_learn = self.jst.alpha_lr > 0  # else alpha stays 0: every gate is 1
        # Without noise and without the policy every draw of an iteration is the same
        # sub-network: one is drawn, and nothing is scored.
        self.draws_alike = not self.jst.perturbation and not self.jst.thresholding
        self.tau = {g: 1.0 for g in self.groups}
        torch.manual_seed(cfg.seed)  # the policy's initial weights
        self.policy = PolicyLearner(self.jst.action_steps, self.jst.policy_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed * 9973 + 17)
        self.static_state = self._static_group_state()
        self.history: list[dict] = []
        self.best: dict | None = None
        self.frozen_keep: KeptChannels | None = None  # the architecture of the frozen iterations
        self.frozen_optimizer: dict | None = None  # its momenta, carried across iterations
        self.next_iteration = 1
        self.fingerprint = f"jst:{cfg.model_dump_json()}:{data_fingerprint(ctx.data)}"
        self.checkpoint = Checkpoint(
            ctx.workdir / "jst.pt" if ctx.workdir else None, self.fingerprint, "jst"
        )

    # ----------------------------------------------------------------- setup
    def _static_group_state(self) -> dict[str, tuple[float, float, float]]:
        """(relative depth, relative width, FLOPs share) of every prunable group."""
        flops, dense = self.setup.flops, self.setup.flops.dense_widths
        widest = max(dense.values())
        state = {}
        for i, g in enumerate(self.groups):
            smaller = {**dense, g: dense[g] - 1} if dense[g] > 1 else dense
            share = (flops(dense) - flops(smaller)) * dense[g] / flops.dense_flops
            state[g] = (i / max(1, len(self.groups) - 1), dense[g] / widest, min(1.0, share))
        return state

    def _states(self) -> torch.Tensor:
        rows = [group_state(*self.static_state[g], self.alpha[g], self.tau[g]) for g in self.groups]
        return torch.tensor(rows, dtype=torch.float32)

    def _loader(self, split: ImageSplit, t: int, salt: int, training: bool = True):
        """A shuffled loader whose order depends only on (seed, iteration, purpose).
        ``training``: augmented, each rank its share; else as stored, the same on every
        rank (BN re-estimation and scoring must agree across ranks)."""
        cfg = self.ctx.config
        seed = cfg.seed * 1_000_003 + t * 101 + salt
        return make_loader(
            self.data,
            cfg.train,
            seed,
            self.device,
            split=split,
            augment=training,
            rank_share=training,
        )

    # ------------------------------------------------------------------- run
    def run(self) -> SearchResult:
        self._warmup()
        self._resume()
        self._check_ranks_resume_alike()
        total = self.schedule.iterations
        with epoch_progress("jst search", total, self.next_iteration - 1) as advance:
            for t in range(self.next_iteration, total + 1):
                try:
                    record = self._iteration(t)
                except TrainingDiverged as err:
                    where = f"jst search iteration {t}/{total}"
                    raise diverged_at(
                        where, err, self.checkpoint.kept("iteration", t - 1)
                    ) from None
                self.history.append(record)
                self.ctx.log_metrics(
                    {
                        k: v
                        for k, v in record.items()
                        if isinstance(v, int | float) and k != "iteration"
                    },
                    t,
                )
                self.next_iteration = t + 1
                self._save()
                advance(record)
        return self._result()

    def _warmup(self) -> None:
        """Step 0: train the full target network for E_w epochs (resumable), on the first
        stretch of the search's one learning-rate curve."""
        epochs = self.jst.warmup_epochs
        if epochs <= 0:
            return
        cfg = self.ctx.config
        whole, fraction = int(epochs), epochs - int(epochs)
        checkpoint = self.ctx.workdir / "jst_warmup.pt" if self.ctx.workdir else None
        train(
            self.setup.model,
            self.data,
            epochs=whole,
            lr=cfg.search.lr,
            settings=cfg.train,
            seed=cfg.seed,
            device=self.device,
            checkpoint=checkpoint,
            fingerprint=f"warmup:{self.fingerprint}",
            desc="jst warm-up",
            lr_factor=self.schedule.lr_factor,
            lr_name="search.lr",
            validate=False,  # the warm-up's dense network is never chosen
        )
        if fraction > 0:
            self._warmup_fraction(whole, fraction, Checkpoint(checkpoint, "", "jst warm-up"))

    def _warmup_fraction(self, whole: int, fraction: float, saved: Checkpoint) -> None:
        """The warm-up's last part of an epoch, on the same learning-rate curve."""
        cfg = self.ctx.config
        loader = self._loader(self.data.train, 0, salt=5)
        steps = max(1, round(fraction * len(loader)))
        lr = cfg.search.lr * self.schedule.lr_factor(whole + fraction / 2)
        optimizer = make_optimizer(self.setup.model, lr, cfg.train)
        batches, check = endless(loader), DivergenceCheck("search.lr")
        try:
            train_steps(self.setup.model, batches, steps, optimizer, cfg.train, check=check)
        except TrainingDiverged as err:
            where = f"jst warm-up's last {fraction:g} epoch"
            raise diverged_at(where, err, saved.kept("warm-up epoch", whole)) from None

    # ------------------------------------------------------------- iteration
    def _iteration(self, t: int) -> dict:
        budget, sigma = self.schedule.budget(t), self.schedule.sigma(t)
        delta = self.schedule.step_size(t)
        frozen = self.schedule.frozen(t)
        states = self._states()
        calibration = self._calibration_batches(t)
        candidates, policy_loss = self._candidates(
            t, states, budget, sigma, delta, frozen, calibration
        )
        chosen = max(candidates, key=lambda c: c.reward)
        self.tau = {g: max(self.jst.tau_min, chosen.tau[g]) for g in self.groups}

        sub = self._sub_network(chosen.keep)
        sub_alpha = {g: self.alpha[g][chosen.keep[g]].clone() for g in self.groups}
        lr, epochs = self.schedule.learning_rate(t), self.schedule.epochs(t)
        train_stats, sub_alpha = self._train_sub(sub, sub_alpha, t, lr, epochs, frozen)
        self._recalibrate(sub, sub_alpha, calibration)
        self._update_target(sub, sub_alpha, chosen.keep)
        meets = chosen.budget_ratio <= self.budget.target + 1e-9
        # Validation decides among the sub-networks that meet the final budget; those of
        # the annealing iterations above it are not measured: nothing reads their accuracy.
        val_top1 = None
        if meets:
            val_top1 = distributed.broadcast_object(self._val_accuracy(sub, sub_alpha))
            if self.best is None or val_top1 > self.best["val_top1"]:
                self._remember_best(t, val_top1, chosen.keep, sub, sub_alpha)

        alpha_abs = torch.cat([a.abs() for a in self.alpha.values()])
        scoring = {}
        if chosen.reward is not None:  # the frozen architecture and alike draws are not scored
            rewards = torch.tensor([c.reward for c in candidates])
            scoring = {
                "reward": chosen.reward,
                "mean_reward": float(rewards.mean()),
                "candidate_score": chosen.score,
            }
        return {
            "iteration": t,
            "budget": budget,
            "sigma": sigma,
            "delta": delta,
            "lr": lr,
            "epochs": epochs,
            "frozen": int(frozen),
            "flops_ratio": self.setup.flops.ratio(chosen.widths),
            **({} if self.budget.cost.name == "flops" else {"budget_ratio": chosen.budget_ratio}),
            **scoring,
            **({} if val_top1 is None else {"val_top1": val_top1}),
            "policy_entropy": self.policy.entropy(states),
            "policy_loss": policy_loss,
            "alpha_abs_max": float(alpha_abs.max()),
            "alpha_abs_mean": float(alpha_abs.mean()),
            "meets_budget": int(meets),
            # No best sub-network yet (before the budget is met): no value, not 0.
            **({"best_val_top1": self.best["val_top1"]} if self.best else {}),
            "arch_sha256": spec_for_indices(self.setup.spec, chosen.keep).sha256,
            **train_stats,
        }

    def _candidates(
        self, t, states, budget: float, sigma: float, delta: float, frozen: bool, calibration
    ):
        """Steps 2-6: N scored candidates (the frozen architecture alone, unscored, once
        frozen; one unscored draw where all draws are alike); the threshold policy learns
        from their rewards. Returns them and the policy loss."""
        if frozen:
            if self.frozen_keep is None:
                self.frozen_keep = self._architecture_to_freeze(states, budget, sigma, delta)
            return [self._candidate_at(self.frozen_keep)], 0.0
        if self.draws_alike:
            return [self._draw(states, budget, sigma, delta)], 0.0
        n = self.jst.candidates
        candidates = [self._draw(states, budget, sigma, delta) for _ in range(n)]
        self._score(candidates, t, budget, calibration)
        self._agree_on_rewards(candidates)
        policy_loss = 0.0
        if self.jst.thresholding:
            policy_loss = self.policy.update(
                [c.decision for c in candidates], [c.reward for c in candidates]
            )
        return candidates, policy_loss

    def _remember_best(
        self, t: int, val_top1: float, keep: KeptChannels, sub: nn.Module, alpha: Alphas
    ):
        """Step 9: the best sub-network that met the final budget, as it was measured."""
        self.best = {
            "iteration": t,
            "val_top1": val_top1,
            "keep": {g: k.clone() for g, k in keep.items()},
            "weights": {k: v.detach().cpu().clone() for k, v in sub.state_dict().items()},
            "alpha": {g: a.detach().clone() for g, a in alpha.items()},
        }

    def _architecture_to_freeze(
        self, states, budget: float, sigma: float, delta: float
    ) -> KeptChannels:
        """The best candidate so far that met the final budget (by validation accuracy),
        else a fresh draw at the final budget."""
        if self.best is not None:
            return {g: k.clone() for g, k in self.best["keep"].items()}
        return self._draw(states, budget, sigma, delta).keep

    def _candidate_at(self, keep: KeptChannels) -> Candidate:
        widths = {g: len(k) for g, k in keep.items()}
        tau = dict(self.tau)
        return Candidate(keep, widths, tau, None, self.budget.cost.ratio(widths))

    def _draw(self, states: torch.Tensor, budget: float, sigma: float, delta: float) -> Candidate:
        """Steps 2-5: perturb alpha, move thresholds, sample, project onto the budget."""
        scores = {
            g: GroupScores.of(gumbel_perturb(self.alpha[g], sigma, self.generator))
            for g in self.groups
        }
        decision = None
        if self.jst.thresholding:
            decision = self.policy.decide(states, self.generator)
            moves = self.policy.moves(decision, delta)
            tau = {
                g: min(1.0, max(self.jst.tau_min, self.tau[g] + float(moves[i])))
                for i, g in enumerate(self.groups)
            }
        else:
            tau = {g: 1.0 for g in self.groups}  # one shared value, set by the projection
        projected, widths = self.sampler.project(scores, tau, budget)
        keep = self.sampler.keep_indices(scores, widths)
        return Candidate(keep, widths, projected, decision, self.budget.cost.ratio(widths))

    @torch.no_grad()
    def _score(
        self, candidates: list[Candidate], t: int, budget: float, calibration: list[torch.Tensor]
    ) -> None:
        """Step 6: accuracy with inherited weights (BN statistics re-estimated) on a few
        validation batches, then reward."""
        score_loader = self._loader(self.data.val, t, salt=1, training=False)
        score_batches = list(zip(range(self.jst.score_batches), score_loader, strict=False))
        for c in candidates:
            sub = self._sub_network(c.keep)
            alpha = {g: self.alpha[g][c.keep[g]] for g in self.groups}
            self._recalibrate(sub, alpha, calibration)
            with self._gated(sub, alpha):
                correct = sum(int((sub(x).argmax(1) == y).sum()) for _, (x, y) in score_batches)
            seen = sum(len(y) for _, (_, y) in score_batches)
            c.score = correct / max(1, seen)
            c.reward = c.score - self.jst.budget_penalty * abs(c.budget_ratio / budget - 1)

    def _agree_on_rewards(self, candidates: list[Candidate]) -> None:
        """Several processes: every rank takes rank 0's scores (no-op with one)."""
        agreed = distributed.broadcast_object([(c.score, c.reward) for c in candidates])
        for c, (score, reward) in zip(candidates, agreed, strict=True):
            c.score, c.reward = score, reward

    def _sub_network(self, keep: KeptChannels) -> nn.Module:
        """The sub-network at ``keep``, physically built, with the target's weights."""
        sub = build_model(spec_for_indices(self.setup.spec, keep)).to(self.device)
        slice_weights(self.setup.model, sub, self.setup.layout, keep)
        return sub

    def _train_sub(
        self, sub: nn.Module, sub_alpha: Alphas, t: int, lr: float, epochs: float, frozen: bool
    ) -> tuple[dict, Alphas]:
        """Step 7: train the chosen sub-network's weights and gates together.

        While the architecture is frozen the optimizer's momenta carry over from one
        iteration to the next, so the frozen network trains as if in one run.
        """
        cfg, j = self.ctx.config, self.jst
        loader = self._loader(self.data.train, t, salt=3)
        steps = max(1, round(epochs * len(loader)))
        if not self.gates_learn:  # gates fixed at 1: plain training, no hooks to pay for
            optimizer = make_optimizer(sub, lr, cfg.train)
            stats = self._train_steps(sub, loader, steps, optimizer, frozen)
            return stats, sub_alpha
        with learnable_gates(sub, self.setup.layout, sub_alpha) as net:
            optimizer = WeightsAndGates(
                make_optimizer(sub, lr, cfg.train), net, j.alpha_lr, j.alpha_max
            )
            regularizer = None
            if j.polarisation > 0:
                regularizer = lambda model: j.polarisation * polarisation(model.alpha)  # noqa: E731
            stats = self._train_steps(net, loader, steps, optimizer, frozen, regularizer)
            return stats, net.alphas()

    def _train_steps(self, net, loader, steps: int, optimizer, frozen: bool, regularizer=None):
        if frozen and self.frozen_optimizer is not None:
            load_momenta(optimizer, self.frozen_optimizer)
        # Each iteration trains a freshly sliced sub-network: a run of its own.
        check = DivergenceCheck("search.lr")
        stats = train_steps(
            net, endless(loader), steps, optimizer, self.ctx.config.train, None, regularizer, check
        )
        if frozen:
            self.frozen_optimizer = optimizer.state_dict()
        return stats

    def _calibration_batches(self, t: int) -> list[torch.Tensor]:
        """Un-augmented training batches of iteration t that re-estimate BN statistics
        (of the candidates, then of the trained sub-network)."""
        loader = self._loader(self.data.train, t, salt=2, training=False)
        return [x for _, (x, _) in zip(range(self.jst.recalibrate_batches), loader, strict=False)]

    def _recalibrate(self, sub: nn.Module, sub_alpha: Alphas, batches: list[torch.Tensor]) -> None:
        """BN statistics that describe this sub-network (gated), not the ones it inherited
        and partly kept through a few hundred steps of momentum 0.1."""
        with self._gated(sub, sub_alpha):
            recalibrate_bn(sub, batches)

    def _update_target(self, sub: nn.Module, sub_alpha: Alphas, keep: KeptChannels) -> None:
        """Step 8: weights, BN statistics and alpha go back at the kept indices."""
        scatter_weights(self.setup.model, sub, self.setup.layout, keep)
        for g in self.groups:
            self.alpha[g][keep[g]] = sub_alpha[g]

    def _val_accuracy(self, sub: nn.Module, sub_alpha: Alphas) -> float:
        with self._gated(sub, sub_alpha):
            return evaluate(
                sub, self.data.val, self.data, self.device, workers=self.ctx.config.train.workers
            )["top1"]

    def _gated(self, sub: nn.Module, sub_alpha: Alphas):
        """``sub`` with its gates applied; gates that never learn are 1: nothing to apply."""
        if not self.gates_learn:
            return contextlib.nullcontext()
        gates = {g: gates_of(a).to(self.device) for g, a in sub_alpha.items()}
        return gated(sub, self.setup.layout, gates)

    # ---------------------------------------------------------------- result
    def _result(self) -> SearchResult:
        """The frozen network as its training ended, or, without frozen iterations, the
        best sub-network that met the final budget; gates folded into BN."""
        if self.frozen_keep is not None:
            keep = self.frozen_keep
            sub = self._sub_network(keep)
            alpha = {g: self.alpha[g][keep[g]].clone() for g in self.groups}
            iteration, val_top1 = self.history[-1]["iteration"], self.history[-1]["val_top1"]
        elif self.best is not None:
            keep, alpha = self.best["keep"], self.best["alpha"]
            sub = self._sub_network(keep)
            # a plain dict of tensors: module versions come from the sub-network
            load_state_dict_with_versions(sub, self.best["weights"])
            iteration, val_top1 = self.best["iteration"], self.best["val_top1"]
        else:
            raise RuntimeError("no candidate met the final budget")  # projection forbids it
        fold_gates(sub, self.setup.layout, {g: gates_of(a) for g, a in alpha.items()})
        spec = spec_for_indices(self.setup.spec, keep)
        summary = budget_summary(self.setup, spec) | {
            "best_iteration": iteration,
            "val_top1": val_top1,
            "iterations": self.schedule.iterations,
        }
        console.log(
            f"jst: sub-network of iteration {iteration} "
            f"(val top-1 {val_top1:.4f}, FLOPs {summary['flops_ratio']:.3f})"
        )
        return SearchResult(spec, sub, self.setup.spec, self.history, summary)

    # ------------------------------------------------------------ checkpoint
    def _save(self) -> None:
        self.checkpoint.save(
            {
                "next_iteration": self.next_iteration,
                "target": self.setup.model.state_dict(),
                "alpha": self.alpha,
                "tau": self.tau,
                "policy": self.policy.state_dict(),
                "generator": self.generator.get_state(),
                "history": self.history,
                "best": self.best,
                "frozen_keep": self.frozen_keep,
                "frozen_optimizer": self.frozen_optimizer,
            }
        )

    def _resume(self) -> None:
        state = self.checkpoint.load()
        if state is None:
            return
        self.setup.model.load_state_dict(state["target"])
        self.alpha, self.tau = state["alpha"], state["tau"]
        self.policy.load_state_dict(state["policy"])
        self.generator.set_state(state["generator"])
        self.history, self.best = state["history"], state["best"]
        self.frozen_keep, self.frozen_optimizer = state["frozen_keep"], state["frozen_optimizer"]
        self.next_iteration = state["next_iteration"]
        console.log(f"jst: resuming at iteration {self.next_iteration} from {self.checkpoint.path}")

    def _check_ranks_resume_alike(self) -> None:
        distributed.check_same(self.next_iteration, "the JST iteration to resume at")
