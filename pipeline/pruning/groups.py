"""Channel groups: which output channels are kept or dropped together.

A model describes its prunable structure as a ``ChannelLayout``: a set of named channel
groups plus, for every conv/linear/BN module, the group its output channels and its
input channels belong to. Everything else (slicing, masking, FLOPs, building compact
models) is generic over the layout, so a new architecture only has to declare one.

In a residual stage the outputs added together by identity shortcuts (the stem or the
stage's projection, and every block's last conv) form one *coupled* group: one mask for
all of them, so a residual addition can never be misaligned.

Layer kinds: ``conv`` and ``linear`` mix channels (weight out x in); ``bn`` is per channel;
``dwconv`` is a depthwise conv (groups == in == out channels): one filter per channel, so
its input and output are the same group, its weight (out x 1 x kh x kw) is sliced on the
output dim alone, and its compact version has groups = the kept width. A layer whose
groups are both ``None`` is fixed: it is never sliced, whatever its type (a grouped conv,
a classifier). A group's gates (masks, JST's filter weights) multiply the outputs of its
BNs, or, for a group no BN carries, of its producing layers. Layouts are written by hand
(``channel_layout()``) or discovered from the traced graph (``pipeline.pruning.discovery``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class LayerWiring:
    """How one module's channels map to groups; ``None`` means fixed (image, classes)."""

    module: str
    kind: str  # "conv", "dwconv", "linear" or "bn" (see the module docstring)
    out_group: str | None
    in_group: str | None = None
    # Input features per input channel: a linear layer reading an N x C x H x W map
    # flattened into C * H * W features reads H * W of them (channel-major) per channel.
    in_block: int = 1
    # A layer reading (in) or a BN normalising (out) a concatenation: its channels as runs
    # of (group, or None for fixed channels, dense width), in order; the group on that
    # side is then None. Kept channel c of a run's group is channel offset + c.
    in_segments: tuple[tuple[str | None, int], ...] = ()
    out_segments: tuple[tuple[str | None, int], ...] = ()
    # A grouped conv (not depthwise): its weight's input dim counts one conv group's
    # channels, so it is sliced with the kept positions of the first group alone.
    conv_groups: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that are kept or dropped together."""

    name: str
    width: int
    coupled: bool = False  # joined by residual additions
    scored_convs: tuple[str, ...] = ()  # convs whose filters score the channels
    scored_bns: tuple[str, ...] = ()  # their BNs (projection shortcuts are never scored)
    bns: tuple[str, ...] = ()  # every BN whose output carries the channels (gates go here)
    # Producers (conv/linear) whose own outputs are gated: a group no BN carries (AlexNet,
    # classifier heads, SE squeezes) is gated on its producers' outputs instead.
    output_gates: tuple[str, ...] = ()
    # Grouped convolutions: the channels are ``tiles`` equal tiles of ``width`` channels
    # each, kept alike (the same positions in every tile), so every conv group keeps as
    # many channels. ``width`` and every kept index count within one tile.
    tiles: int = 1

    @property
    def channels(self) -> int:
        """The number of channels the group's tensors have (``width`` x ``tiles``)."""
        return self.width * self.tiles

    @property
    def gate_points(self) -> tuple[str, ...]:
        """Every module whose output the group's gates multiply."""
        return self.bns + self.output_gates


@dataclass
class ChannelLayout:
    """The channel groups of a model and the wiring of every prunable module."""

    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    layers: list[LayerWiring] = field(default_factory=list)

    def new_group(self, name: str, width: int, *, coupled: bool = False) -> str:
        self.groups[name] = ChannelGroup(name, width, coupled)
        return name

    def add_producer(
        self, group: str, conv: str, bn: str, in_group: str | None, *, scored: bool = True
    ) -> None:
        """Attach a conv+BN pair whose outputs carry ``group``'s channels.

        Unscored producers (projection shortcuts) are sliced with the group but never
        decide which of its channels matter.
        """
        g = self.groups[group]
        self.groups[group] = replace(
            g,
            scored_convs=g.scored_convs + ((conv,) if scored else ()),
            scored_bns=g.scored_bns + ((bn,) if scored else ()),
            bns=g.bns + (bn,),
        )
        self.wire(conv, "conv", group, in_group)
        self.wire(bn, "bn", group)

    def mark_coupled(self, name: str) -> None:
        self.groups[name] = replace(self.groups[name], coupled=True)

    def wire(
        self,
        module: str,
        kind: str,
        out_group: str | None,
        in_group: str | None = None,
        in_block: int = 1,
        *,
        in_segments: tuple[tuple[str | None, int], ...] = (),
        out_segments: tuple[tuple[str | None, int], ...] = (),
        conv_groups: int = 1,
    ):
        self.layers.append(
            LayerWiring(
                module,
                kind,
                out_group,
                in_group,
                in_block,
                in_segments,
                out_segments,
                conv_groups,
            )
        )

    def dense_widths(self) -> dict[str, int]:
        return {name: g.width for name, g in self.groups.items()}

    def prunable_groups(self, prune_coupled: bool = True) -> list[str]:
        return [n for n, g in self.groups.items() if prune_coupled or not g.coupled]


# The channels a compact network keeps: per group, the ascending indices into the dense
# network's channels. Slicing, scattering and the spec's widths are all read from it.
KeptChannels = dict[str, torch.Tensor]


def channel_indices(layout: ChannelLayout, keep: KeptChannels) -> KeptChannels:
    """The kept channels of the tensors: a tiled group's kept positions in every tile."""
    expanded = {}
    for name, kept in keep.items():
        g = layout.groups[name]
        if g.tiles == 1:
            expanded[name] = kept
        else:
            starts = torch.arange(g.tiles, device=kept.device).view(-1, 1) * g.width
            expanded[name] = (starts + kept.view(1, -1)).flatten()
    return expanded


def channel_widths(layout: ChannelLayout, widths: dict[str, int]) -> dict[str, int]:
    """The number of channels the tensors keep: a tiled group's width in every tile."""
    return {name: w * layout.groups[name].tiles for name, w in widths.items()}


def full_indices(layout: ChannelLayout) -> KeptChannels:
    """Keep-everything indices (the dense network)."""
    return {n: torch.arange(g.width) for n, g in layout.groups.items()}


def indices_from_scores(scores: dict[str, torch.Tensor], widths: dict[str, int]) -> KeptChannels:
    """Keep the ``widths[g]`` highest-scoring channels of every group, in ascending order."""
    keep = {}
    for name, s in scores.items():
        k = widths[name]
        top = torch.topk(s.detach().float().cpu(), k, sorted=False).indices
        keep[name] = torch.sort(top).values
    return keep
