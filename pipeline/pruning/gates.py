"""Per-channel gates applied after BatchNorm (or after the producing layer, without one).

A gate multiplies each BN output channel of a group by a factor. With 0/1 factors it
masks channels (a masked dense network computes exactly what the physically pruned one
does); with JST's ``2 * sigmoid(alpha)`` it scales them. Gates sit *after* BN: before
it, BN would normalise the scale away and the gate would get no gradient. A group that no
BN carries is gated on the outputs of its producing convs/linears (``output_gates``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.pruning.groups import ChannelLayout

# A group's gate: fixed factors, or a function that computes them at every forward pass
# (a learnable gate, through which the gradient reaches its parameters).
Gate = torch.Tensor | Callable[[], torch.Tensor]


@contextmanager
def gated(model: nn.Module, layout: ChannelLayout, gates: dict[str, Gate]) -> Iterator[None]:
    """Within the block, multiply every gate point's output (its BNs, or its producers
    when no BN carries it) of each group by that group's gate."""
    handles = []
    for name, gate in gates.items():
        factors = gate if callable(gate) else (lambda gate=gate: gate)
        tiles = layout.groups[name].tiles
        for point in layout.groups[name].gate_points:

            def hook(module, _inputs, output, factors=factors, tiles=tiles):
                f = factors().to(output.device, output.dtype).repeat(tiles)  # every tile
                return output * f.view(_per_channel(module, output))

            handles.append(model.get_submodule(point).register_forward_hook(hook))
    for bn, segments in _concatenation_bns(layout, gates):

        def concatenation_hook(_module, _inputs, output, segments=segments):
            factors = _run_factors(segments, layout, gates, output)
            return output * factors.view(1, -1, 1, 1)

        handles.append(model.get_submodule(bn).register_forward_hook(concatenation_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def keep_masks(layout: ChannelLayout, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """0/1 masks of the kept channels of every group."""
    masks = {}
    for name, g in layout.groups.items():
        mask = torch.zeros(g.width)
        mask[keep[name]] = 1.0
        masks[name] = mask
    return masks


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
            factors = (gate() if callable(gate) else gate).to(like.device, like.dtype)
            parts.append(factors.repeat(layout.groups[group].tiles))
    return torch.cat(parts)


@torch.no_grad()
def fold_gates(model: nn.Module, layout: ChannelLayout, gates: dict[str, torch.Tensor]):
    """Fold per-channel gates into the parameters of their gate points: BN's affine
    parameters, or a producing conv/linear's output rows and bias. Free at inference."""
    for name, gate in gates.items():
        for point in layout.groups[name].gate_points:
            module = model.get_submodule(point)
            g = gate.to(module.weight.device, module.weight.dtype).repeat(layout.groups[name].tiles)
            per_row = [-1] + [1] * (module.weight.dim() - 1)  # a BN's weight is 1-D
            module.weight.mul_(g.view(per_row))
            if module.bias is not None:
                module.bias.mul_(g)
    for bn_name, segments in _concatenation_bns(layout, gates):
        bn = model.get_submodule(bn_name)
        factors = _run_factors(segments, layout, gates, bn.weight)
        bn.weight.mul_(factors)
        bn.bias.mul_(factors)
