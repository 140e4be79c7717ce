"""Flexible per-group thresholds learned by policy gradient (REINFORCE).

One small policy network, shared by all groups, looks at a group's state and picks an
action that moves the group's keep-mass tau_g by a multiple of delta. The policy is
updated by REINFORCE over the N candidates of each iteration. With N > 1 each candidate's
baseline is the mean reward of the others (leave-one-out): advantages sum to zero, so a
rising reward level does not make every action look good. A single candidate is compared
with a moving average of past rewards instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

STATE_SIZE = 5


def group_state(
    depth: float, width: float, flops_share: float, alpha: torch.Tensor, tau: float
) -> list[float]:
    """(relative depth, relative width, FLOPs share, normalised entropy of softmax(alpha), tau)."""
    p = torch.softmax(alpha.double(), 0)
    entropy = float(-(p * torch.log(p.clamp_min(1e-30))).sum()) / math.log(max(2, len(alpha)))
    return [depth, width, flops_share, entropy, tau]


class ThresholdPolicy(nn.Module):
    def __init__(self, num_actions: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(STATE_SIZE, hidden), nn.Tanh(), nn.Linear(hidden, num_actions)
        )
        nn.init.zeros_(self.net[-1].weight)  # start uniform over actions
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, states: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.net(states))


@dataclass
class Decision:
    actions: torch.Tensor  # one action index per group
    states: torch.Tensor


class PolicyLearner:
    """Samples threshold moves and learns from the candidates' rewards."""

    def __init__(self, steps: list[float], lr: float, baseline_momentum: float = 0.9):
        self.steps = torch.tensor(steps, dtype=torch.float64)
        self.policy = ThresholdPolicy(len(steps))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.momentum = baseline_momentum
        self.baseline: float | None = None

    def decide(self, states: torch.Tensor, generator: torch.Generator) -> Decision:
        with torch.no_grad():
            probs = self.policy(states).probs
        actions = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return Decision(actions, states)

    def moves(self, decision: Decision, delta: float) -> torch.Tensor:
        return self.steps[decision.actions] * delta

    def entropy(self, states: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.policy(states).entropy().mean())

    def advantages(self, rewards: list[float]) -> torch.Tensor:
        r = torch.tensor(rewards, dtype=torch.float32)
        if len(r) > 1:
            return r - (r.sum() - r) / (len(r) - 1)
        if self.baseline is None:
            self.baseline = float(r.mean())
        return r - self.baseline

    def update(self, decisions: list[Decision], rewards: list[float]) -> float:
        """One REINFORCE step over the candidates; returns the policy loss."""
        advantages = self.advantages(rewards)
        loss = torch.zeros(())
        for decision, advantage in zip(decisions, advantages.tolist(), strict=True):
            log_prob = self.policy(decision.states).log_prob(decision.actions).sum()
            loss = loss - advantage * log_prob
        loss = loss / len(decisions)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        mean = sum(rewards) / len(rewards)
        self.baseline = (
            mean
            if self.baseline is None
            else (self.momentum * self.baseline + (1 - self.momentum) * mean)
        )
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
