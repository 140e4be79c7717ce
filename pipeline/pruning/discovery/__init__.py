"""Channel groups discovered from a model's traced graph.

``discover_layout(model, input_shape)`` derives the ``ChannelLayout`` of a model that
does not write one by hand, in three steps, one module each:

- ``tracing``: the model is traced with ``torch.fx.symbolic_trace`` and run once on a
  zeros batch (as fx's ``ShapeProp``) to learn every tensor's channel count;
- ``rules`` and ``elements``: every tensor's channels (dim 1) start as an *element*; a
  rule per operator creates (conv, linear), passes on (BN, activations, pooling,
  depthwise convs) or unites (residual ``add``, squeeze-and-excitation ``mul``) elements
  in a union-find. Each resulting class is one channel group;
- ``layout``: the prunable classes become named groups and every layer is wired.

A class is left *whole* (its channels fixed, never sliced) when it is not provably safe
to prune, with the reason recorded: it reaches the network input or output, a reshaping
op (channel shuffle, permute), a normalisation other than BatchNorm, or any op without a
rule (assumed to mix channels). Concatenations prune (each input keeps its own group, at
its offset in the result) and so do grouped convs (their channels in equal tiles, the same
positions kept in each); or a channel-mixing layer reads it without a gate in between (a 0/1 gate
there would not make the masked dense model equal the sliced one). Gates sit on BN
outputs; a class no BN carries is gated on its producing layers' outputs instead (found
by a first walk, applied in a second). Being whole spreads through the
union-find to every element joined with a whole one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from pipeline.pruning.discovery.elements import Analysis, check_every_layer_reached
from pipeline.pruning.discovery.layout import LayoutBuilder
from pipeline.pruning.discovery.rules import apply
from pipeline.pruning.discovery.tracing import DiscoveryError, traced
from pipeline.pruning.groups import ChannelLayout

__all__ = ["Discovery", "DiscoveryError", "discover", "discover_layout", "model_layout"]


@dataclass(frozen=True)
class Discovery:
    """A discovered layout plus the channels left whole: (first module, reason) each."""

    layout: ChannelLayout
    whole: tuple[tuple[str, str], ...]


def discover_layout(model: nn.Module, input_shape: tuple[int, int, int]) -> ChannelLayout:
    """The channel layout of ``model`` for ``input_shape`` (C, H, W) images, from its graph."""
    return discover(model, input_shape).layout


def model_layout(model: nn.Module, input_shape: tuple[int, int, int]) -> ChannelLayout:
    """The hand-written ``channel_layout()`` when the model has one, else the discovered one."""
    if callable(getattr(model, "channel_layout", None)):
        return model.channel_layout()
    return discover_layout(model, input_shape)


def discover(model: nn.Module, input_shape: tuple[int, int, int]) -> Discovery:
    """Trace ``model``, find its channel groups, and say which channels stay whole and why."""
    graph = traced(model, tuple(input_shape))
    modules = dict(model.named_modules())
    analysis = _walk(graph, Analysis(modules))
    output_gates = analysis.producers_without_batchnorm()
    if output_gates:  # the same classes, now gated on those producers' outputs
        analysis = _walk(graph, Analysis(modules, output_gates=output_gates))
    check_every_layer_reached(model, graph, analysis)
    analysis.finish()
    return Discovery(LayoutBuilder(analysis, graph).layout(), analysis.whole_report())


def _walk(graph: fx.Graph, analysis: Analysis) -> Analysis:
    for node in graph.nodes:
        apply(analysis, node)
    return analysis
