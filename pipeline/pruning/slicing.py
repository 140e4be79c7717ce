"""Dense <-> compact: build physically smaller models and move weights between them.

``build_model(spec)`` creates the dense model and swaps every conv/linear/BN for one of
the spec's widths. ``slice_weights`` copies the kept channels of a dense model into a
compact one; ``scatter_weights`` is its inverse (JST's updater): it writes a compact
model's weights back at the kept indices and leaves dropped channels untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import ArtifactError
from pipeline.models import create_model
from pipeline.models.layers import conv_like
from pipeline.pruning.discovery import model_layout
from pipeline.pruning.groups import (
    ChannelLayout,
    KeptChannels,
    LayerWiring,
    channel_indices,
    channel_widths,
)
from pipeline.pruning.spec import ArchSpec


@dataclass(frozen=True)
class DenseModel:
    """A freshly initialised dense model with its channel layout and architecture spec."""

    model: nn.Module
    layout: ChannelLayout
    spec: ArchSpec


def dense_model(model_name: str, input_shape, num_classes: int) -> DenseModel:
    """The dense ``model_name`` for ``input_shape`` (C, H, W) images: the one place a model
    is made from a name and a shape, so the model, its layout and its spec always agree.
    The layout is the model's ``channel_layout()``, or else discovered from its graph."""
    c, h, _ = input_shape
    model = create_model(model_name, num_classes=num_classes, in_channels=c, input_size=h)
    layout = _layout((model_name, tuple(input_shape), num_classes), model)
    spec = ArchSpec(model_name, tuple(input_shape), num_classes, layout.dense_widths())
    return DenseModel(model, layout, spec)


# Layouts by (model name, input shape, classes): compact models are built from a name once
# per JST candidate, a discovery traces the model, and a name's model does not change
# within a process.
_LAYOUTS: dict[tuple, ChannelLayout] = {}


def _layout(key: tuple, model: nn.Module) -> ChannelLayout:
    if key not in _LAYOUTS:
        _LAYOUTS[key] = model_layout(model, key[1])
    return copy.deepcopy(_LAYOUTS[key])  # callers own their layout


def dense_spec(model_name: str, input_shape, num_classes: int) -> ArchSpec:
    return dense_model(model_name, input_shape, num_classes).spec


def build_model(spec: ArchSpec) -> nn.Module:
    """A freshly initialised model with the spec's widths."""
    dense = dense_model(spec.model, spec.input_shape, spec.num_classes)
    model, layout = dense.model, dense.layout
    if set(spec.widths) != set(layout.groups):
        raise ArtifactError(
            f"architecture spec does not match model {spec.model!r}: expected groups "
            f"{sorted(layout.groups)}, got {sorted(spec.widths)}; rerun the search stage."
        )
    for name, width in spec.widths.items():
        if width > layout.groups[name].width:
            raise ArtifactError(
                f"architecture spec: group {name!r} keeps {width} channels but the dense "
                f"model has {layout.groups[name].width}; rerun the search stage."
            )
    return resize_model(model, layout, spec.widths)


def resize_model(model: nn.Module, layout: ChannelLayout, widths: dict[str, int]) -> nn.Module:
    """Swap, in place, every conv/linear/BN of ``model`` whose groups the ``widths`` change
    for a freshly initialised one of those widths; returns ``model``."""
    kept_channels = channel_widths(layout, widths)
    for wiring in layout.layers:
        module = model.get_submodule(wiring.module)
        model.set_submodule(wiring.module, _resized(module, wiring, kept_channels))
    return model


def _resized(module: nn.Module, wiring: LayerWiring, widths: dict[str, int]) -> nn.Module:
    def width(group, default, segments=()):
        if segments:  # a concatenation: the kept width of every run
            return sum(widths[g] if g is not None else w for g, w in segments)
        return widths[group] if group is not None else default

    if isinstance(module, nn.Conv2d):
        return _resized_conv(module, wiring, width)
    if isinstance(module, nn.BatchNorm2d):
        c = width(wiring.out_group, module.num_features, wiring.out_segments)
        if c == module.num_features:
            return module
        return nn.BatchNorm2d(
            c, module.eps, module.momentum, module.affine, module.track_running_stats
        )
    if isinstance(module, nn.Linear):
        out_f = width(wiring.out_group, module.out_features)
        in_f = width(wiring.in_group, module.in_features // wiring.in_block, wiring.in_segments)
        in_f *= wiring.in_block
        if (out_f, in_f) == (module.out_features, module.in_features):
            return module
        return nn.Linear(in_f, out_f, bias=module.bias is not None)
    raise TypeError(f"{wiring.module}: cannot resize {type(module).__name__}")


def _resized_conv(conv: nn.Conv2d, wiring: LayerWiring, width) -> nn.Conv2d:
    """A conv of the kept widths; a depthwise conv keeps one filter per kept channel."""
    out_c = width(wiring.out_group, conv.out_channels)
    in_c = width(wiring.in_group, conv.in_channels, wiring.in_segments)
    if (out_c, in_c) == (conv.out_channels, conv.in_channels):
        return conv  # fixed channels (whatever its groups) or nothing dropped
    # depthwise: one filter per kept channel; grouped: as many groups, each keeping the
    # same channels of its tile (discovery ties the groups' channels into tiles)
    groups = out_c if wiring.kind == "dwconv" else conv.groups
    if in_c % groups or out_c % groups:
        raise ValueError(
            f"{wiring.module}: {in_c} input and {out_c} output channels do not split into "
            f"its {groups} groups; its channel groups must be tiled by the conv's groups"
        )
    return conv_like(conv, in_c, out_c, groups)


def spec_for_indices(spec: ArchSpec, keep: KeptChannels) -> ArchSpec:
    widths = {name: int(len(keep[name])) for name in spec.widths}
    return ArchSpec(spec.model, spec.input_shape, spec.num_classes, widths)


def _sliced_tensors(layout: ChannelLayout, keep: KeptChannels):
    """Yield (module name, parameter name, index per dim) for every sliced tensor."""
    keep = channel_indices(layout, keep)
    for wiring in layout.layers:
        out_idx = keep.get(wiring.out_group) if wiring.out_group else None
        in_idx = keep.get(wiring.in_group) if wiring.in_group else None
        if wiring.out_segments:  # a BN over a concatenation
            out_idx = _segment_indices(wiring.out_segments, keep)
        if wiring.kind == "bn":
            for p in ("weight", "bias", "running_mean", "running_var"):
                yield wiring.module, p, (out_idx,)
            continue
        if wiring.kind == "dwconv":  # weight: out x 1 x kh x kw, one filter per channel
            in_idx = None
        if wiring.in_segments:
            in_idx = _segment_indices(wiring.in_segments, keep)
        if in_idx is not None and wiring.in_block > 1:
            in_idx = _block_indices(in_idx, wiring.in_block)
        if in_idx is not None and wiring.conv_groups > 1:
            # the weight's input dim is one conv group's channels; every group keeps the
            # same positions (tiles), so the first group's kept positions index them all
            per_group = layout.groups[wiring.in_group].channels // wiring.conv_groups
            in_idx = in_idx[in_idx < per_group]
        yield wiring.module, "weight", (out_idx, in_idx)
        yield wiring.module, "bias", (out_idx,)


def _segment_indices(segments: tuple[tuple[str | None, int], ...], keep: KeptChannels):
    """The kept channels of a concatenation: every run's kept indices at its dense offset
    (all of a fixed run's)."""
    parts, offset = [], 0
    for group, width in segments:
        kept = keep[group] if group is not None else torch.arange(width)
        parts.append(kept.cpu() + offset)
        offset += width
    return torch.cat(parts)


def _block_indices(channels: torch.Tensor, block: int) -> torch.Tensor:
    """The features of the kept channels of a flattened map: channel c is the block of
    features c * block .. c * block + block - 1 (flatten is channel-major)."""
    return (channels.view(-1, 1) * block + torch.arange(block, device=channels.device)).flatten()


def _kept_part(tensor: torch.Tensor, dims: tuple) -> torch.Tensor:
    """The entries of ``tensor`` at the kept index of every dimension (None: all)."""
    for d, idx in enumerate(dims):
        if idx is not None:
            tensor = tensor.index_select(d, idx.to(tensor.device))
    return tensor


@torch.no_grad()
def slice_weights(dense: nn.Module, compact: nn.Module, layout: ChannelLayout, keep: KeptChannels):
    """Copy the kept channels of ``dense`` into ``compact`` (whose widths match ``keep``)."""
    dense_state, compact_state = dense.state_dict(), compact.state_dict()
    for module, param, dims in _sliced_tensors(layout, keep):
        key = f"{module}.{param}"
        if key in dense_state:
            compact_state[key].copy_(_kept_part(dense_state[key], dims))
    handled = {f"{m}.{p}" for m, p, _ in _sliced_tensors(layout, keep)}
    for key, value in dense_state.items():
        if key not in handled:  # BN counters and any unsliced parameter
            compact_state[key].copy_(value)


@torch.no_grad()
def scatter_weights(
    dense: nn.Module, compact: nn.Module, layout: ChannelLayout, keep: KeptChannels
):
    """Write ``compact``'s weights back into ``dense`` at the kept indices (JST's updater)."""
    dense_state, compact_state = dense.state_dict(), compact.state_dict()
    for module, param, dims in _sliced_tensors(layout, keep):
        key = f"{module}.{param}"
        if key not in dense_state:
            continue
        target = dense_state[key]
        index = _mesh_index(target, dims)
        target[index] = compact_state[key].to(target.device, target.dtype)


def _mesh_index(tensor: torch.Tensor, dims: tuple) -> tuple:
    """An advanced index selecting the outer product of per-dimension indices."""
    full = [idx if idx is not None else torch.arange(tensor.shape[d]) for d, idx in enumerate(dims)]
    grids = torch.meshgrid(*[i.to(tensor.device) for i in full], indexing="ij")
    return tuple(grids)
