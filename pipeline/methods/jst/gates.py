"""JST's filter weights alpha as gates m = 2 sigmoid(alpha) after BN, learned with the weights.

The gates of a sub-network are trained in the same steps as its weights (one forward and
backward pass: no extra data, no extra passes). Adam moves alpha; after every step alpha is
clipped to [-alpha_max, alpha_max], so a gate never saturates (its gradient stays alive)
and softmax(alpha), which the sampler reads, keeps comparing filters instead of
collapsing onto one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from pipeline.pruning.gates import gated
from pipeline.pruning.groups import ChannelLayout

Alphas = dict[str, torch.Tensor]


def gates_of(alpha: torch.Tensor) -> torch.Tensor:
    """m = 2 sigmoid(alpha): 1 at alpha = 0, so an untouched network is unchanged."""
    return 2 * torch.sigmoid(alpha)


def polarisation(alphas) -> torch.Tensor:
    """Low mean gate, high spread: pushes gates apart so the sampler can tell filters apart
    (Zhuang et al. 2020)."""
    terms = []
    for a in alphas:
        m = torch.sigmoid(a)
        terms.append(m.mean() - (m - m.mean()).abs().mean())
    return torch.stack(terms).sum()


class GatedNetwork(nn.Module):
    """``network`` with a learnable gate after the BNs of every group in ``alpha``.

    Its parameters are the network's and the alphas, so gradient all-reduce, global BN
    and divergence checks treat both alike. Use through ``learnable_gates``: the gates act
    only within it (``pipeline.pruning.gates.gated`` applies them, and removes them after).
    """

    def __init__(self, network: nn.Module, alpha: Alphas, trainable: bool):
        super().__init__()
        self.network = network
        self.names = list(alpha)
        device = next(network.parameters()).device
        self.alpha = nn.ParameterList(
            nn.Parameter(alpha[g].detach().clone().to(device), requires_grad=trainable)
            for g in self.names
        )

    def gates(self) -> dict[str, Callable[[], torch.Tensor]]:
        """Every group's gate, computed from its alpha at each forward pass (so the
        gradient reaches alpha)."""
        return {g: partial(gates_of, a) for g, a in zip(self.names, self.alpha, strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def alphas(self) -> Alphas:
        return {g: a.detach().cpu().clone() for g, a in zip(self.names, self.alpha, strict=True)}


@contextmanager
def learnable_gates(
    network: nn.Module, layout: ChannelLayout, alpha: Alphas, trainable: bool = True
) -> Iterator[GatedNetwork]:
    net = GatedNetwork(network, alpha, trainable)
    with gated(network, layout, net.gates()):
        yield net


class WeightsAndGates:
    """SGD for the weights and Adam for the gates, stepped together; alpha clipped after.

    Quacks like the one optimizer ``train_steps`` expects (``param_groups`` are the
    weights', whose learning rate a divergence message reports).
    """

    def __init__(self, weights: torch.optim.SGD, gates: GatedNetwork, lr: float, bound: float):
        self.weights = weights
        self.gates = gates
        self.bound = bound
        trainable = [a for a in gates.alpha if a.requires_grad]
        self.adam = torch.optim.Adam(trainable, lr=lr) if trainable and lr > 0 else None

    @property
    def param_groups(self):
        return self.weights.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.weights.zero_grad(set_to_none=set_to_none)
        if self.adam is not None:
            self.adam.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.weights.step()
        if self.adam is not None:
            self.adam.step()
            with torch.no_grad():
                for a in self.gates.alpha:
                    a.clamp_(-self.bound, self.bound)

    def state_dict(self) -> dict:
        adam = self.adam.state_dict() if self.adam is not None else None
        return {"weights": self.weights.state_dict(), "gates": adam}

    def load_state_dict(self, state: dict) -> None:
        self.weights.load_state_dict(state["weights"])
        if self.adam is not None and state["gates"] is not None:
            self.adam.load_state_dict(state["gates"])


def load_momenta(optimizer: torch.optim.Optimizer | WeightsAndGates, state: dict) -> None:
    """An optimizer's saved momenta (and Adam moments), with the learning rates it has now
    (a later point of the schedule than the one they were saved at)."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
