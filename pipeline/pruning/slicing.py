"""Dense <-> compact: build physically smaller models and move weights between them.

``build_model(spec)`` creates the dense model and swaps every conv/linear/BN for one of
the spec's widths. ``slice_weights`` copies the kept channels of a dense model into a
compact one; ``scatter_weights`` is its inverse (JST's updater): it writes a compact
model's weights back at the kept indices and leaves dropped channels untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ArtifactError
from pipeline.models import create_model
from pipeline.pruning.groups import ChannelLayout, LayerWiring
from pipeline.pruning.spec import ArchSpec

Indices = dict[str, torch.Tensor]


def dense_spec(model_name: str, input_shape, num_classes: int) -> ArchSpec:
    model = create_model(
        model_name, num_classes=num_classes, in_channels=input_shape[0], input_size=input_shape[1]
    )
    return ArchSpec(
        model_name, tuple(input_shape), num_classes, model.channel_layout().dense_widths()
    )


def build_model(spec: ArchSpec) -> nn.Module:
    """A freshly initialised model with the spec's widths."""
    c, h, _ = spec.input_shape
    model = create_model(spec.model, num_classes=spec.num_classes, in_channels=c, input_size=h)
    layout = model.channel_layout()
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
    for wiring in layout.layers:
        module = model.get_submodule(wiring.module)
        model.set_submodule(wiring.module, _resized(module, wiring, spec.widths))
    return model


def _resized(module: nn.Module, wiring: LayerWiring, widths: dict[str, int]) -> nn.Module:
    def width(group, default):
        return widths[group] if group is not None else default

    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"{wiring.module}: grouped convolutions are not supported")
        out_c = width(wiring.out_group, module.out_channels)
        in_c = width(wiring.in_group, module.in_channels)
        if (out_c, in_c) == (module.out_channels, module.in_channels):
            return module
        return nn.Conv2d(
            in_c,
            out_c,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, nn.BatchNorm2d):
        c = width(wiring.out_group, module.num_features)
        return (
            module if c == module.num_features else nn.BatchNorm2d(c, module.eps, module.momentum)
        )
    if isinstance(module, nn.Linear):
        out_f = width(wiring.out_group, module.out_features)
        in_f = width(wiring.in_group, module.in_features)
        if (out_f, in_f) == (module.out_features, module.in_features):
            return module
        return nn.Linear(in_f, out_f, bias=module.bias is not None)
    raise TypeError(f"{wiring.module}: cannot resize {type(module).__name__}")


def spec_for_indices(spec: ArchSpec, keep: Indices) -> ArchSpec:
    widths = {name: int(len(keep[name])) for name in spec.widths}
    return ArchSpec(spec.model, spec.input_shape, spec.num_classes, widths)


def _select(layout: ChannelLayout, keep: Indices):
    """Yield (module name, parameter name, index per dim) for every sliced tensor."""
    for wiring in layout.layers:
        out_idx = keep.get(wiring.out_group) if wiring.out_group else None
        in_idx = keep.get(wiring.in_group) if wiring.in_group else None
        if wiring.kind == "bn":
            for p in ("weight", "bias", "running_mean", "running_var"):
                yield wiring.module, p, (out_idx,)
            continue
        yield wiring.module, "weight", (out_idx, in_idx)
        yield wiring.module, "bias", (out_idx,)


def _gather(tensor: torch.Tensor, dims: tuple) -> torch.Tensor:
    for d, idx in enumerate(dims):
        if idx is not None:
            tensor = tensor.index_select(d, idx.to(tensor.device))
    return tensor


@torch.no_grad()
def slice_weights(dense: nn.Module, compact: nn.Module, layout: ChannelLayout, keep: Indices):
    """Copy the kept channels of ``dense`` into ``compact`` (whose widths match ``keep``)."""
    dense_state, compact_state = dense.state_dict(), compact.state_dict()
    for module, param, dims in _select(layout, keep):
        key = f"{module}.{param}"
        if key in dense_state:
            compact_state[key].copy_(_gather(dense_state[key], dims))
    handled = {f"{m}.{p}" for m, p, _ in _select(layout, keep)}
    for key, value in dense_state.items():
        if key not in handled:  # BN counters and any unsliced parameter
            compact_state[key].copy_(value)


@torch.no_grad()
def scatter_weights(dense: nn.Module, compact: nn.Module, layout: ChannelLayout, keep: Indices):
    """Write ``compact``'s weights back into ``dense`` at the kept indices (JST's updater)."""
    dense_state, compact_state = dense.state_dict(), compact.state_dict()
    for module, param, dims in _select(layout, keep):
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
