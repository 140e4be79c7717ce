"""Layers rebuilt with other channel counts: by the model factories (a first convolution
for grey images) and by the pruning code (a compact model's layers)."""

from __future__ import annotations

from torch import nn


def conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    """A freshly initialised conv configured as ``conv`` (kernel, stride, padding, dilation,
    bias, padding mode) with the given channels and groups."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
