"""Per-channel gates applied after BatchNorm.

A gate multiplies each BN output channel of a group by a factor. With 0/1 factors it
masks channels (a masked dense network computes exactly what the physically pruned one
does); with JST's ``2 * sigmoid(alpha)`` it scales them. Gates sit *after* BN: before
it, BN would normalise the scale away and the gate would get no gradient.
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
    """Within the block, multiply every BN output of each group by that group's gate."""
    handles = []
    for name, gate in gates.items():
        factors = gate if callable(gate) else (lambda gate=gate: gate)
        for bn in layout.groups[name].bns:

            def hook(_module, _inputs, output, factors=factors):
                return output * factors().to(output.device, output.dtype).view(1, -1, 1, 1)

            handles.append(model.get_submodule(bn).register_forward_hook(hook))
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


@torch.no_grad()
def fold_gates_into_bn(model: nn.Module, layout: ChannelLayout, gates: dict[str, torch.Tensor]):
    """Fold per-channel gates into BN's affine parameters: free at inference."""
    for name, gate in gates.items():
        for bn_name in layout.groups[name].bns:
            bn = model.get_submodule(bn_name)
            g = gate.to(bn.weight.device, bn.weight.dtype)
            bn.weight.mul_(g)
            bn.bias.mul_(g)
