"""Per-channel gates applied after BatchNorm (or after the producing layer, without one).

A gate multiplies each BN output channel of a group by a factor. With 0/1 factors it
masks channels (a masked dense network computes exactly what the physically pruned one
does); with JST's ``2 * sigmoid(alpha)`` it scales them. Gates sit *after* BN: before
it, BN would normalise the scale away and the gate would get no gradient. A group that no
BN carries is gated on the outputs of its producing convs/linears (``output_gates``).

A gate is applied by scaling its gate point's affine parameters (BN's weight and bias, or a
conv's or linear's output rows and bias), which multiplies the output by the same factors:
m (w x + b) = (m w) x + m b. Scaling a vector of C parameters instead of the N x C x H x W
output saves a full pass over the activations forward and two backward (measured in
``benchmarks/step_cost.py``); the gradient reaches the gate through the scaled parameters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.pruning.groups import ChannelLayout

# A group's gate: fixed factors, or a function that computes them at every forward pass
# (a learnable gate, through which the gradient reaches its parameters).
Gate = torch.Tensor | Callable[[], torch.Tensor]

# The modules whose forward is their affine parameters applied to a normalised or linear
# map of the input; any other gate point (a BN subclass with its own forward, such as the
# global BN of distributed training) has its output multiplied instead.
_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@contextmanager
def gated(model: nn.Module, layout: ChannelLayout, gates: dict[str, Gate]) -> Iterator[None]:
    """Within the block, multiply every gate point's output (its BNs, or its producers
    when no BN carries it) of each group by that group's gate."""
    with ExitStack() as stack:
        for point, factors in _factors_per_module(layout, gates).items():
            stack.enter_context(_scaled_outputs(model.get_submodule(point), factors))
        yield


def keep_masks(layout: ChannelLayout, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """0/1 masks of the kept channels of every group."""
    masks = {}
    for name, g in layout.groups.items():
        mask = torch.zeros(g.width)
        mask[keep[name]] = 1.0
        masks[name] = mask
    return masks


@torch.no_grad()
def fold_gates(model: nn.Module, layout: ChannelLayout, gates: dict[str, torch.Tensor]):
    """Fold per-channel gates into the parameters of their gate points: BN's affine
    parameters, or a producing conv/linear's output rows and bias. Free at inference."""
    for point, factors in _factors_per_module(layout, gates).items():
        module = model.get_submodule(point)
        weight, bias = _scaled_parameters(module, factors(module.weight))
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


# Per gate point: its factors (one per output channel) on a tensor's device and dtype.
Factors = Callable[[torch.Tensor], torch.Tensor]


def _factors_per_module(layout: ChannelLayout, gates: dict[str, Gate]) -> dict[str, Factors]:
    """Every gate point's per-channel factors: its group's gate over every tile, and the
    runs' gates on a BN over a concatenation; a module gated twice gets the product."""
    parts: dict[str, list[Factors]] = defaultdict(list)
    for name, gate in gates.items():
        tiles = layout.groups[name].tiles
        for point in layout.groups[name].gate_points:
            parts[point].append(
                lambda like, gate=gate, tiles=tiles: _value(gate, like).repeat(tiles)
            )
    for bn, segments in _concatenation_bns(layout, gates):
        parts[bn].append(
            lambda like, segments=segments: _run_factors(segments, layout, gates, like)
        )

    def product(fs: list[Factors]) -> Factors:
        if len(fs) == 1:
            return fs[0]
        return lambda like: torch.stack([f(like) for f in fs]).prod(0)

    return {point: product(fs) for point, fs in parts.items()}


def _value(gate: Gate, like: torch.Tensor) -> torch.Tensor:
    return (gate() if callable(gate) else gate).to(like.device, like.dtype)


@contextmanager
def _scaled_outputs(module: nn.Module, factors: Factors) -> Iterator[None]:
    """Within the block, ``module``'s output channels are multiplied by ``factors``."""
    if "forward" in module.__dict__:  # already overridden: compose through a hook instead
        handle = module.register_forward_hook(
            lambda m, _inputs, output: output * factors(output).view(_per_channel(m, output))
        )
        try:
            yield
        finally:
            handle.remove()
        return

    def forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # the class is read at every call: distributed training swaps BN classes in place
        kind = type(self)
        if kind in _PLAIN_BATCH_NORMS and self.affine:
            return _batch_norm(self, x, *_scaled_parameters(self, factors(self.weight)))
        if kind in _PLAIN_CONVS:
            return self._conv_forward(x, *_scaled_parameters(self, factors(self.weight)))
        if kind is nn.Linear:
            return F.linear(x, *_scaled_parameters(self, factors(self.weight)))
        output = kind.forward(self, x, *args, **kwargs)
        return output * factors(output).view(_per_channel(self, output))

    # bound, so that a deep copy made within the block computes with its own parameters
    module.forward = MethodType(forward, module)
    try:
        yield
    finally:
        del module.forward


def _scaled_parameters(
    module: nn.Module, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``module`` with output channel c's row and bias times factors[c]
    (a BN's weight is 1-D; a conv's or linear's output channels are its weight's rows)."""
    per_row = [-1] + [1] * (module.weight.dim() - 1)
    bias = module.bias * factors if module.bias is not None else None
    return module.weight * factors.view(per_row), bias


def _batch_norm(bn: nn.modules.batchnorm._BatchNorm, x, weight, bias) -> torch.Tensor:
    """``nn.BatchNorm*d.forward`` with the given affine parameters."""
    bn._check_input_dim(x)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    running = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if running else None,
        bn.running_var if running else None,
        weight,
        bias,
        batch_stats,
        momentum,
        bn.eps,
    )


def _per_channel(module: nn.Module, output: torch.Tensor) -> list[int]:
    """The shape that spreads one factor per channel over ``output``: a linear layer's
    features are its last dim (N x F, or N x ... x F tokens), others' dim 1 (N x C x H x W)."""
    if isinstance(module, nn.Linear):
        return [1] * (output.dim() - 1) + [-1]
    return [1, -1] + [1] * (output.dim() - 2)


def _concatenation_bns(layout: ChannelLayout, gates: dict[str, Gate]):
    """(BN, runs) of every BN over a concatenation one of whose runs ``gates`` gates."""
    for wiring in layout.layers:
        if wiring.out_segments and any(g in gates for g, _ in wiring.out_segments):
            yield wiring.module, wiring.out_segments


def _run_factors(
    segments, layout: ChannelLayout, gates: dict[str, Gate], like: torch.Tensor
) -> torch.Tensor:
    """One factor per channel of a concatenation, on ``like``'s device and dtype: each
    run's group's gate, 1 on fixed runs and on groups without a gate (those are not
    pruned, so they have their dense width)."""
    parts = []
    for group, width in segments:
        gate = gates.get(group) if group is not None else None
        if gate is None:
            dense = layout.groups[group].channels if group is not None else width
            parts.append(torch.ones(dense, device=like.device, dtype=like.dtype))
        else:
            parts.append(_value(gate, like).repeat(layout.groups[group].tiles))
    return torch.cat(parts)
