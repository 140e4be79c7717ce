"""The threshold policy learns from rewards; the schedules anneal coarse to fine."""

import pytest
import torch

from pipeline.methods.jst.policy import STATE_SIZE, PolicyLearner, group_state
from pipeline.methods.jst.schedule import Schedule
from tests.conftest import tiny_config


def test_policy_update_has_nonzero_gradient_on_different_rewards():
    learner = PolicyLearner([-1.0, 0.0, 1.0], lr=0.1)
    generator = torch.Generator().manual_seed(0)
    states = torch.rand(6, STATE_SIZE, generator=generator)
    decisions = [learner.decide(states, generator) for _ in range(4)]
    before = [p.detach().clone() for p in learner.policy.parameters()]
    learner.update(decisions, [0.1, 0.9, 0.4, 0.6])
    changed = [
        not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True)
    ]
    assert any(changed)


def test_advantages_of_several_candidates_sum_to_zero_even_when_rewards_rise():
    learner = PolicyLearner([-1.0, 1.0], lr=0.1)
    learner.baseline = 0.1  # a moving average far below today's rewards
    advantages = learner.advantages([0.6, 0.7, 0.8, 0.9])
    assert float(advantages.sum()) == pytest.approx(0.0, abs=1e-6)
    assert (advantages[:2] < 0).all() and (advantages[2:] > 0).all()


def test_candidates_that_score_alike_teach_the_policy_nothing_however_far_rewards_rose():
    """A moving-average baseline lagging rising rewards made every advantage positive,
    reinforcing whatever the candidates did. Equal rewards carry no information."""
    learner = PolicyLearner([-1.0, 0.0, 1.0], lr=0.1)
    learner.baseline = 0.1  # a moving average far below today's rewards
    generator = torch.Generator().manual_seed(3)
    states = torch.rand(6, STATE_SIZE, generator=generator)
    decisions = [learner.decide(states, generator) for _ in range(4)]
    before = [p.detach().clone() for p in learner.policy.parameters()]
    learner.update(decisions, [0.75] * 4)  # exact in binary: the advantages are exactly 0
    after = list(learner.policy.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_single_candidate_gets_an_advantage_once_the_baseline_exists():
    learner = PolicyLearner([-1.0, 1.0], lr=0.1)
    generator = torch.Generator().manual_seed(1)
    states = torch.rand(3, STATE_SIZE, generator=generator)
    learner.update([learner.decide(states, generator)], [0.5])  # sets the baseline
    before = [p.detach().clone() for p in learner.policy.parameters()]
    learner.update([learner.decide(states, generator)], [0.9])
    assert any(
        not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True)
    )


def test_policy_learns_to_prefer_the_rewarded_action():
    learner = PolicyLearner([-1.0, 0.0, 1.0], lr=0.05)
    generator = torch.Generator().manual_seed(2)
    states = torch.rand(4, STATE_SIZE, generator=generator)
    for _ in range(60):
        decisions = [learner.decide(states, generator) for _ in range(8)]
        rewards = [float((d.actions == 2).float().mean()) for d in decisions]
        learner.update(decisions, rewards)
    probs = learner.policy(states).probs.mean(0)
    assert probs[2] > 0.6


def test_group_state_entropy_is_normalised():
    uniform = group_state(0.5, 1.0, 0.1, torch.zeros(16), 0.7)
    peaked = group_state(0.5, 1.0, 0.1, torch.tensor([10.0] + [0.0] * 15), 0.7)
    assert uniform[3] == pytest.approx(1.0)
    assert peaked[3] < 0.1


def test_schedule_anneals_and_spends_the_epochs():
    cfg = tiny_config(
        search={
            "epochs": 22,
            "target_flops": 0.4,
            "jst": {
                "iterations": 10,
                "warmup_epochs": 2,
                "epoch_decay": 0.5,
                "anneal_fraction": 0.5,
                "perturbation": True,
            },
        }
    )
    s = Schedule.from_config(cfg.search)
    assert sum(s.epochs(t) for t in range(1, 11)) == pytest.approx(20)
    assert s.epochs(1) > s.epochs(10)
    assert s.budget(1) == pytest.approx(1 - 0.6 * 0.2)
    assert s.budget(5) == pytest.approx(0.4) and s.budget(10) == pytest.approx(0.4)
    assert s.sigma(1) > s.sigma(10) and s.step_size(1) > s.step_size(10)
    assert s.total_epochs == pytest.approx(22)
    assert s.lr_factor(0) == pytest.approx(1.0)
    assert s.lr_factor(22) == pytest.approx(cfg.search.jst.lr_decay)


def test_learning_rate_follows_one_curve_from_warmup_to_the_last_iteration():
    """The warm-up's cosine used to fall to ~0 and the iterations restart at search.lr."""
    cfg = tiny_config(
        search={"epochs": 12, "lr": 0.1, "jst": {"iterations": 6, "warmup_epochs": 2}}
    )
    s = Schedule.from_config(cfg.search)
    warmup_end = s.lr * s.lr_factor(s.warmup_epochs)
    rates = [s.learning_rate(t) for t in range(1, 7)]
    assert warmup_end >= rates[0] > 0.5 * s.lr  # no collapse before the iterations
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] >= s.lr * cfg.search.jst.lr_decay


def test_frozen_iterations_are_the_last_ones_and_run_at_the_target():
    cfg = tiny_config(
        search={
            "epochs": 12,
            "target_flops": 0.3,
            "jst": {"iterations": 10, "anneal_fraction": 1.0, "freeze_fraction": 0.3},
        }
    )
    s = Schedule.from_config(cfg.search)
    assert [t for t in range(1, 11) if s.frozen(t)] == [8, 9, 10]
    assert s.budget(7) > 0.3 and s.budget(8) == pytest.approx(0.3)
