"""Counting FLOPs and parameters.

FLOPs here are the multiply-accumulates of conv and linear layers, the convention of the
pruning literature (ResNet-56 on 32x32: 125.5 M). ``count_flops`` measures any built
model with hooks; ``FlopsModel`` predicts the FLOPs of any width assignment analytically
(per layer: coefficient x in-width x out-width), which the budget searches call
thousands of times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.pruning.groups import ChannelLayout, LayerWiring


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_out = kh * kw * module.in_channels // module.groups
        return per_out * output.shape[1] * output.shape[2] * output.shape[3]
    # a linear layer applied to every position of a token map counts once per position
    return module.in_features * output.numel() // output.shape[0]


@torch.no_grad()
def _trace_macs(model: nn.Module, input_shape) -> dict[str, int]:
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):

            def hook(mod, _inp, out, name=name):
                macs[name] = _layer_macs(mod, out)

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs


def count_flops(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one image through ``model``'s conv and linear layers."""
    return sum(_trace_macs(model, input_shape).values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class _Term:
    coefficient: int  # MACs per unit of every varying width (fixed widths folded in)
    in_group: str | None  # None: the input width is fixed (or depthwise: no input term)
    out_group: str | None


class FlopsModel:
    """Analytic FLOPs of a model family for any assignment of group widths; a cost model
    of the budget projection (``pipeline.latency.LatencyModel`` is the other)."""

    name = "flops"

    def __init__(self, dense: nn.Module, layout: ChannelLayout, input_shape):
        macs = _trace_macs(dense, input_shape)
        modules = dict(dense.named_modules())
        tiles = {name: g.tiles for name, g in layout.groups.items()}
        self._terms = [
            term
            for wiring in layout.layers
            if wiring.kind != "bn"
            for term in _terms(wiring, modules[wiring.module], macs[wiring.module], tiles)
        ]
        self.dense_widths = layout.dense_widths()
        self.dense_flops = self(self.dense_widths)
        unwired = sum(macs.values()) - self.dense_flops
        if unwired:
            raise ValueError(f"{unwired} MACs come from layers missing from the channel layout")

    def __call__(self, widths: dict[str, int]) -> int:
        total = 0
        for t in self._terms:
            i = widths[t.in_group] if t.in_group else 1
            o = widths[t.out_group] if t.out_group else 1
            total += t.coefficient * i * o
        return total

    @property
    def dense_cost(self) -> int:
        return self.dense_flops

    def ratio(self, widths: dict[str, int]) -> float:
        return self(widths) / self.dense_flops


def _terms(wiring: LayerWiring, module: nn.Module, macs: int, tiles: dict[str, int]) -> list[_Term]:
    """MACs as coefficient x in-width x out-width over the widths that vary (a tiled
    group's width counts one tile): linear in each for a conv or linear layer (grouped
    too: its groups divide the tiles); linear in its width alone for a depthwise conv. A
    layer reading a concatenation has one term per run (its MACs split by run width)."""
    conv = isinstance(module, nn.Conv2d)
    in_c = module.in_channels if conv else module.in_features // wiring.in_block
    out_c = module.out_channels if conv else module.out_features
    out_units = out_c // tiles[wiring.out_group] if wiring.out_group else 1
    if wiring.in_segments:
        per_pair = _exact(macs, in_c * out_units, wiring.module)
        return [
            _Term(per_pair * tiles[group], group, wiring.out_group)
            if group is not None
            else _Term(per_pair * width, None, wiring.out_group)
            for group, width in wiring.in_segments
        ]
    in_group = None if wiring.kind == "dwconv" else wiring.in_group
    in_units = in_c // tiles[in_group] if in_group else 1
    return [_Term(_exact(macs, in_units * out_units, wiring.module), in_group, wiring.out_group)]


def _exact(macs: int, units: int, module: str) -> int:
    """MACs per unit of width; the layout must make them whole, or predictions drift."""
    if macs % units:
        raise ValueError(
            f"{module}: {macs} MACs are not a whole multiple of its {units} width units; "
            "its channel groups are wired inconsistently with the layer"
        )
    return macs // units
