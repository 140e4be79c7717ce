"""Joint search-and-training (JST): the compact network is learned, not pruned after.

Each iteration draws N candidate sub-networks from the target network's filter weights
alpha (Gumbel-perturbed; per-group keep-masses set by a learned threshold policy and
projected onto the current budget), scores them cheaply, trains the best one physically
built, learns its gates on a held-out split, and writes weights, BN statistics and alpha
back into the target. See docs/method.md; the numbered steps below follow it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pipeline import distributed
from pipeline.atomic import torch_save_atomic
from pipeline.data import Augment, BatchLoader, PreparedData, Split, stratified_split
from pipeline.errors import TrainingDiverged
from pipeline.methods.base import (
    DenseSetup,
    SearchContext,
    SearchResult,
    budget_summary,
    dense_setup,
    register_method,
)
from pipeline.methods.jst.policy import PolicyLearner, group_state
from pipeline.methods.jst.sampler import GroupScores, Sampler, gumbel_perturb
from pipeline.methods.jst.schedule import Schedule
from pipeline.progress import console, epoch_progress
from pipeline.pruning.budget import check_feasible
from pipeline.pruning.gates import fold_gates_into_bn, gated
from pipeline.pruning.slicing import build_model, scatter_weights, slice_weights, spec_for_indices
from pipeline.train import (
    batch_layout,
    diverged_at,
    endless,
    evaluate,
    gpu_data_limit,
    make_optimizer,
    mixed_precision,
    train,
    train_steps,
)

Keep = dict[str, torch.Tensor]


@register_method("jst")
def jst(ctx: SearchContext) -> SearchResult:
    return JointSearch(ctx).run()


@dataclass
class Candidate:
    keep: Keep
    widths: dict[str, int]
    tau: dict[str, float]  # projected keep-masses
    decision: object | None
    flops_ratio: float
    score: float = 0.0
    reward: float = 0.0


def gates_of(alpha: torch.Tensor) -> torch.Tensor:
    """m = 2 sigmoid(alpha): 1 at alpha = 0, so an untouched network is unchanged."""
    return 2 * torch.sigmoid(alpha)


def polarisation(alphas: list[torch.Tensor]) -> torch.Tensor:
    """Low mean gate, high spread: pushes gates apart so the sampler can tell filters apart."""
    total = torch.zeros(())
    for a in alphas:
        m = torch.sigmoid(a)
        total = total + m.mean() - (m - m.mean()).abs().mean()
    return total


def data_fingerprint(data: PreparedData) -> str:
    digest = hashlib.sha256()
    for split in (data.train, data.val):
        digest.update(split.images.numpy().tobytes())
        digest.update(split.labels.numpy().tobytes())
    return digest.hexdigest()[:16]


class JointSearch:
    def __init__(self, ctx: SearchContext):
        self.ctx = ctx
        cfg, self.search_cfg, self.jst = ctx.config, ctx.config.search, ctx.config.search.jst
        self.device = ctx.device
        self.schedule = Schedule.from_config(self.search_cfg)
        self.setup: DenseSetup = dense_setup(ctx)
        s = self.search_cfg
        check_feasible(self.setup.flops, self.setup.groups, s.target_flops, s.k_min, s.round_to)
        self.setup.model.to(self.device)
        self.groups = self.setup.groups
        self.sampler = Sampler(self.setup.flops, self.groups, s.k_min, s.round_to)
        self.train_data, self.alpha_split = self._carve_alpha_split(ctx.data, cfg.seed)
        self.alpha = {g: torch.zeros(self.setup.layout.groups[g].width) for g in self.groups}
        self.tau = {g: 1.0 for g in self.groups}
        torch.manual_seed(cfg.seed)  # the policy's initial weights
        self.policy = PolicyLearner(self.jst.action_steps, self.jst.policy_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed * 9973 + 17)
        self.static_state = self._static_group_state()
        self.history: list[dict] = []
        self.best: dict | None = None
        self.next_iteration = 1
        self.fingerprint = f"jst:{cfg.model_dump_json()}:{data_fingerprint(ctx.data)}"
        self.checkpoint = ctx.workdir / "jst.pt" if ctx.workdir else None

    # ----------------------------------------------------------------- setup
    def _carve_alpha_split(self, data: PreparedData, seed: int):
        """Hold out part of the training images for alpha and candidate scores."""
        labels = data.train.labels.numpy()
        parts = stratified_split(labels, {"alpha": self.jst.val_fraction}, seed=seed + 1)
        subset = lambda idx: Split(data.train.images[idx], data.train.labels[idx])  # noqa: E731
        train = PreparedData(
            subset(parts["train"]),
            data.val,
            data.test,
            data.classes,
            data.mean,
            data.std,
            data.dataset,
        )
        return train, subset(parts["alpha"])

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

    def _loader(
        self, split: Split, t: int, salt: int, augment: bool = True, batch_size: int | None = None
    ) -> BatchLoader:
        """A shuffled loader whose order depends only on (seed, iteration, purpose)."""
        cfg = self.ctx.config
        a = cfg.train.augment
        return BatchLoader(
            split,
            self.train_data.mean,
            self.train_data.std,
            batch_size=batch_size or cfg.train.batch_size,
            shuffle=True,
            augment=Augment(a.crop_padding, a.hflip) if augment else None,
            seed=cfg.seed * 1_000_003 + t * 101 + salt,
            device=self.device,
            max_resident_bytes=gpu_data_limit(cfg.train, self.device),
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
                    raise diverged_at(where, err, self._kept_checkpoint(t)) from None
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
        """Step 0: train the full target network for E_w epochs (resumable)."""
        epochs = self.jst.warmup_epochs
        if epochs <= 0:
            return
        cfg = self.ctx.config
        whole, fraction = int(epochs), epochs - int(epochs)
        checkpoint = self.ctx.workdir / "jst_warmup.pt" if self.ctx.workdir else None
        train(
            self.setup.model,
            self.train_data,
            epochs=whole,
            lr=cfg.search.lr,
            settings=cfg.train,
            seed=cfg.seed,
            device=self.device,
            checkpoint=checkpoint,
            fingerprint=f"warmup:{self.fingerprint}",
            desc="jst warm-up",
        )
        if fraction > 0:
            loader = self._loader(self.train_data.train, 0, salt=5)
            steps = max(1, round(fraction * len(loader)))
            optimizer = make_optimizer(self.setup.model, cfg.search.lr, cfg.train)
            train_steps(self.setup.model, endless(loader), steps, optimizer, cfg.train)

    # ------------------------------------------------------------- iteration
    def _iteration(self, t: int) -> dict:
        budget, sigma = self.schedule.budget(t), self.schedule.sigma(t)
        delta = self.schedule.step_size(t)
        states = self._states()
        candidates = [self._draw(states, budget, sigma, delta) for _ in range(self.jst.candidates)]
        self._score(candidates, t, budget)
        self._agree_on_rewards(candidates)
        policy_loss = 0.0
        if self.jst.thresholding:
            policy_loss = self.policy.update(
                [c.decision for c in candidates], [c.reward for c in candidates]
            )
        chosen = max(candidates, key=lambda c: c.reward)
        self.tau = {g: max(self.jst.tau_min, chosen.tau[g]) for g in self.groups}

        sub = self._gather(chosen.keep)
        sub_alpha = {g: self.alpha[g][chosen.keep[g]].clone() for g in self.groups}
        lr, epochs = self.schedule.learning_rate(t), self.schedule.epochs(t)
        train_stats = self._train_sub(sub, sub_alpha, t, lr, epochs)
        # Several processes: rank 0's gates and accuracy, so every rank decides alike.
        sub_alpha = distributed.broadcast_object(self._learn_alpha(sub, sub_alpha, t))
        self._update_target(sub, sub_alpha, chosen.keep)
        val_top1 = distributed.broadcast_object(self._val_accuracy(sub, sub_alpha))

        spec = spec_for_indices(self.setup.spec, chosen.keep)
        meets = chosen.flops_ratio <= self.search_cfg.target_flops + 1e-9
        if meets and (self.best is None or val_top1 > self.best["val_top1"]):
            self.best = {
                "iteration": t,
                "val_top1": val_top1,
                "keep": {g: k.clone() for g, k in chosen.keep.items()},
                "weights": {k: v.detach().cpu().clone() for k, v in sub.state_dict().items()},
                "alpha": {g: a.detach().clone() for g, a in sub_alpha.items()},
            }
        rewards = torch.tensor([c.reward for c in candidates])
        return {
            "iteration": t,
            "budget": budget,
            "sigma": sigma,
            "delta": delta,
            "lr": lr,
            "epochs": epochs,
            "flops_ratio": chosen.flops_ratio,
            "reward": chosen.reward,
            "mean_reward": float(rewards.mean()),
            "candidate_score": chosen.score,
            "val_top1": val_top1,
            "policy_entropy": self.policy.entropy(states),
            "policy_loss": policy_loss,
            "meets_budget": int(meets),
            "best_val_top1": self.best["val_top1"] if self.best else 0.0,
            "arch_sha256": spec.sha256,
            **train_stats,
        }

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
        return Candidate(keep, widths, projected, decision, self.setup.flops.ratio(widths))

    @torch.no_grad()
    def _score(self, candidates: list[Candidate], t: int, budget: float) -> None:
        """Step 6: accuracy with inherited weights on a few held-out batches, then reward."""
        score_loader = self._loader(self.alpha_split, t, salt=1, augment=False)
        calib_loader = self._loader(self.train_data.train, t, salt=2, augment=False)
        score_batches = list(zip(range(self.jst.score_batches), score_loader, strict=False))
        calib_batches = list(zip(range(self.jst.recalibrate_batches), calib_loader, strict=False))
        for c in candidates:
            sub = self._gather(c.keep)
            gates = {g: gates_of(self.alpha[g][c.keep[g]]) for g in self.groups}
            with gated(sub, self.setup.layout, gates):
                _recalibrate_bn(sub, [x for _, (x, _) in calib_batches])
                sub.eval()
                correct = sum(int((sub(x).argmax(1) == y).sum()) for _, (x, y) in score_batches)
            seen = sum(len(y) for _, (_, y) in score_batches)
            c.score = correct / max(1, seen)
            c.reward = c.score - self.jst.budget_penalty * abs(c.flops_ratio / budget - 1)

    def _agree_on_rewards(self, candidates: list[Candidate]) -> None:
        """Several processes: every rank takes rank 0's scores (no-op with one)."""
        agreed = distributed.broadcast_object([(c.score, c.reward) for c in candidates])
        for c, (score, reward) in zip(candidates, agreed, strict=True):
            c.score, c.reward = score, reward

    def _gather(self, keep: Keep) -> nn.Module:
        """The sub-network at ``keep``, physically built, with the target's weights."""
        sub = build_model(spec_for_indices(self.setup.spec, keep)).to(self.device)
        slice_weights(self.setup.model, sub, self.setup.layout, keep)
        return sub

    def _train_sub(self, sub: nn.Module, sub_alpha: Keep, t: int, lr: float, epochs: float):
        """Step 7a: train the chosen sub-network's weights, its gates held fixed."""
        cfg = self.ctx.config
        loader = self._loader(self.train_data.train, t, salt=3)
        steps = max(1, round(epochs * len(loader)))
        optimizer = make_optimizer(sub, lr, cfg.train)
        gates = {g: gates_of(a).to(self.device) for g, a in sub_alpha.items()}
        with gated(sub, self.setup.layout, gates):
            return train_steps(sub, endless(loader), steps, optimizer, cfg.train)

    def _learn_alpha(self, sub: nn.Module, sub_alpha: Keep, t: int) -> Keep:
        """Step 7b: update the gates on the held-out split; only alpha changes."""
        if self.jst.alpha_steps == 0:
            return sub_alpha
        alphas = {g: a.to(self.device).clone().requires_grad_(True) for g, a in sub_alpha.items()}
        optimizer = torch.optim.Adam(alphas.values(), lr=self.jst.alpha_lr)
        loader = self._loader(self.alpha_split, t, salt=4, batch_size=self.jst.alpha_batch_size)
        batches = endless(loader)
        settings = self.ctx.config.train
        sub.eval()  # BN running statistics stay as training left them
        for p in sub.parameters():
            p.requires_grad_(False)
        for _, (x, y) in zip(range(self.jst.alpha_steps), batches, strict=False):
            gates = {g: gates_of(a) for g, a in alphas.items()}
            x = batch_layout(x, settings)  # as in train_steps; no-ops on a CPU under auto
            with gated(sub, self.setup.layout, gates), mixed_precision(settings, self.device):
                loss = F.cross_entropy(sub(x), y)
            loss = loss + self.jst.polarisation * polarisation(list(alphas.values()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for p in sub.parameters():
            p.requires_grad_(True)
        return {g: a.detach().cpu() for g, a in alphas.items()}

    def _update_target(self, sub: nn.Module, sub_alpha: Keep, keep: Keep) -> None:
        """Step 8: weights, BN statistics and alpha go back at the kept indices."""
        scatter_weights(self.setup.model, sub, self.setup.layout, keep)
        for g in self.groups:
            self.alpha[g][keep[g]] = sub_alpha[g]

    def _val_accuracy(self, sub: nn.Module, sub_alpha: Keep) -> float:
        gates = {g: gates_of(a).to(self.device) for g, a in sub_alpha.items()}
        with gated(sub, self.setup.layout, gates):
            return evaluate(sub, self.train_data.val, self.train_data, self.device)["top1"]

    # ---------------------------------------------------------------- result
    def _result(self) -> SearchResult:
        """The best sub-network that met the final budget, gates folded into BN."""
        if self.best is None:
            raise RuntimeError("no candidate met the final budget")  # projection forbids it
        keep, alpha = self.best["keep"], self.best["alpha"]
        sub = self._gather(keep)
        sub.load_state_dict(self.best["weights"])
        fold_gates_into_bn(sub, self.setup.layout, {g: gates_of(a) for g, a in alpha.items()})
        spec = spec_for_indices(self.setup.spec, keep)
        summary = budget_summary(self.setup, spec) | {
            "best_iteration": self.best["iteration"],
            "val_top1": self.best["val_top1"],
            "iterations": self.schedule.iterations,
        }
        console.log(
            f"jst: best sub-network from iteration {self.best['iteration']} "
            f"(val top-1 {self.best['val_top1']:.4f}, FLOPs {summary['flops_ratio']:.3f})"
        )
        return SearchResult(spec, sub, self.setup.spec, self.history, summary)

    # ------------------------------------------------------------ checkpoint
    def _kept_checkpoint(self, t: int) -> str:
        if self.checkpoint is None or t == 1:
            return "No iteration checkpoint was written yet."
        return f"The checkpoint after iteration {t - 1} is kept ({self.checkpoint})."

    def _save(self) -> None:
        if self.checkpoint is None or not distributed.is_main():
            return
        torch_save_atomic(
            {
                "fingerprint": self.fingerprint,
                "next_iteration": self.next_iteration,
                "target": self.setup.model.state_dict(),
                "alpha": self.alpha,
                "tau": self.tau,
                "policy": self.policy.state_dict(),
                "generator": self.generator.get_state(),
                "history": self.history,
                "best": self.best,
            },
            self.checkpoint,
        )

    def _resume(self) -> None:
        path = self.checkpoint
        if path is None or not Path(path).is_file():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            console.log(f"jst: ignoring unreadable checkpoint {path}")
            return
        if state.get("fingerprint") != self.fingerprint:
            console.log("jst: checkpoint is of other parameters or data; starting afresh")
            return
        self.setup.model.load_state_dict(state["target"])
        self.alpha, self.tau = state["alpha"], state["tau"]
        self.policy.load_state_dict(state["policy"])
        self.generator.set_state(state["generator"])
        self.history, self.best = state["history"], state["best"]
        self.next_iteration = state["next_iteration"]
        console.log(f"jst: resuming at iteration {self.next_iteration} from {path}")

    def _check_ranks_resume_alike(self) -> None:
        distributed.check_same(self.next_iteration, "the JST iteration to resume at")


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate BN statistics of a freshly gathered sub-network on a few batches."""
    if not batches:
        return
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
