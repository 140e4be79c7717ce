"""The exactness check every layout must pass: with a 0/1 mask on a group's gates, the
dense model computes what the physically sliced compact model does, and writing the
compact weights back (scatter) then slicing again gives them back unchanged.

Used by the property tests of every structure discovery handles, and for checking a model
by hand (a real-size torchvision model, a user's model) outside the test suite.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.pruning.flops import FlopsModel, count_flops
from pipeline.pruning.gates import fold_gates, gated, keep_masks
from pipeline.pruning.groups import ChannelLayout, KeptChannels
from pipeline.pruning.slicing import resize_model, scatter_weights, slice_weights


def random_keep(layout: ChannelLayout, generator: torch.Generator) -> KeptChannels:
    """Per group a random non-empty subset of its channels, ascending."""
    keep = {}
    for name, group in layout.groups.items():
        k = int(torch.randint(1, group.width + 1, (1,), generator=generator))
        keep[name] = torch.sort(torch.randperm(group.width, generator=generator)[:k]).values
    return keep


def compact_of(model: nn.Module, layout: ChannelLayout, keep: KeptChannels) -> nn.Module:
    """The compact copy of ``model`` keeping ``keep``, with the kept weights, in eval mode."""
    widths = {name: len(kept) for name, kept in keep.items()}
    compact = resize_model(copy.deepcopy(model), layout, widths).eval()
    slice_weights(model, compact, layout, keep)
    return compact


def scatter_then_slice(
    model: nn.Module, compact: nn.Module, layout: ChannelLayout, keep: KeptChannels
) -> nn.Module:
    """``compact``'s weights written into a copy of ``model`` whose sliced layers are
    zeroed (JST's updater), then sliced out again: a state equal to ``compact``'s when
    scatter inverts slice."""
    restored = copy.deepcopy(model)
    wired = {w.module for w in layout.layers}
    for name, p in restored.named_parameters():
        if name.rpartition(".")[0] in wired:
            p.data.zero_()
    scatter_weights(restored, compact, layout, keep)
    return compact_of(restored, layout, keep)


@dataclass(frozen=True)
class ExactnessReport:
    max_difference: float  # between the masked dense and the sliced compact outputs
    counted_flops: int  # of the compact model, by hooks
    predicted_flops: int  # by the FLOPs model, from the kept widths
    scatter_inverts_slice: bool

    def holds(self, tolerance: float = 1e-5) -> bool:
        return (
            self.max_difference <= tolerance
            and self.counted_flops == self.predicted_flops
            and self.scatter_inverts_slice
        )


def check(
    model: nn.Module,
    layout: ChannelLayout,
    keep: KeptChannels,
    x: torch.Tensor,
    flops: FlopsModel,
    *,
    scatter: bool = True,
) -> ExactnessReport:
    """Every exactness property of ``layout`` for one keep set, on the batch ``x``;
    ``scatter``: also write the compact weights back and slice them again (two more
    model copies: skipped where a large model makes it slow)."""
    compact = compact_of(model, layout, keep)
    with torch.no_grad():
        with gated(model, layout, keep_masks(layout, keep)):
            masked = model(x)
        sliced = compact(x)
    inverts = True
    if scatter:
        again = scatter_then_slice(model, compact, layout, keep).state_dict()
        inverts = all(
            torch.allclose(again[key], value, rtol=1e-6, atol=1e-7)
            for key, value in compact.state_dict().items()
        )
    return ExactnessReport(
        max_difference=float((masked - sliced).abs().max()),
        counted_flops=count_flops(compact, tuple(x.shape[1:])),
        predicted_flops=flops({name: len(kept) for name, kept in keep.items()}),
        scatter_inverts_slice=inverts,
    )


def gated_then_folded(
    model: nn.Module, layout: ChannelLayout, gates: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s outputs on ``x`` with JST's ``gates`` attached, then with the gates folded
    into its weights (in place, as a finished search folds them): equal when folding is
    exact."""
    with torch.no_grad(), gated(model, layout, gates):
        attached = model(x)
    fold_gates(model, layout, gates)
    with torch.no_grad():
        return attached, model(x)


def discovered_for_check(build: Callable[[], nn.Module], input_shape, *, bn_bias: bool = False):
    """``build()`` under seed 0, in eval mode, with BatchNorm statistics (and, with
    ``bn_bias``, biases) drawn away from the identity so that a mis-sliced channel changes
    the output; returned with its discovery and FLOPs model."""
    from pipeline.pruning.discovery import discover

    torch.manual_seed(0)
    model = build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            if bn_bias:
                m.bias.data.uniform_(-0.2, 0.2)
    found = discover(model, tuple(input_shape))
    return model, found, FlopsModel(model, found.layout, input_shape)
