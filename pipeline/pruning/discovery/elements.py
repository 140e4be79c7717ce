"""Channel grouping: a union-find over channel elements, filled by the operator rules.

Every tensor's channels (dim 1) are an *element*; the rules (``rules.py``) create, pass on
and unite elements node by node. Each resulting class is one channel group, or *whole*
(never sliced) with the reasons it is not provably safe to prune. Every tensor also carries
a *gated* flag: whether a 0/1 mask on its group's gates leaves its masked channels exactly
zero, which a channel-mixing layer reading it needs (see docs/discovery.md). Gates sit on
the group's BN outputs or, for a group no BN carries, on its producers' outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import fx, nn

from pipeline.pruning.discovery.tracing import DiscoveryError, channels, describe, shape

OUTPUT_REASON = "the network output (the classes)"
NO_GATE = "neither a BatchNorm nor a gated layer output carries these channels"
# The layers a layout wires; each must be called by the traced forward pass.
LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


class UnionFind:
    """Channel elements; each class is a group, whole (with reasons) or prunable."""

    def __init__(self):
        self.parent: list[int] = []
        self.width: list[int] = []
        self.producer: list[str | None] = []  # the conv/linear that made the element
        self.reasons: dict[int, list[str]] = {}
        self.coupled: set[int] = set()
        # Per class, how many equal tiles its channels split into, kept alike (grouped
        # convs: the same channels of every conv group, so every group keeps as many).
        self.tiles: dict[int, int] = {}

    def new(self, width: int, producer: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.width.append(width)
        self.producer.append(producer)
        return len(self.parent) - 1

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def union(self, a: int, b: int) -> int:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra != rb:
            self.parent[rb] = ra
            self.reasons.setdefault(ra, []).extend(self.reasons.pop(rb, []))
            if rb in self.coupled:
                self.coupled.add(ra)
            if rb in self.tiles:
                self.tile(ra, self.tiles.pop(rb))
        return ra

    def tile(self, e: int, tiles: int) -> None:
        """Keep ``e``'s class alike in ``tiles`` equal tiles (with any tiling it has: the
        least common multiple, which is consistent with both)."""
        root = self.find(e)
        combined = math.lcm(self.tiles.get(root, 1), tiles)
        if self.width[root] % combined:
            self.make_whole(root, f"its channels cannot split into {combined} equal tiles")
        else:
            self.tiles[root] = combined

    def make_whole(self, e: int, reason: str) -> None:
        self.reasons.setdefault(self.find(e), []).append(reason)

    def is_whole(self, e: int) -> bool:
        return bool(self.reasons.get(self.find(e)))


@dataclass(frozen=True)
class Segment:
    """A run of a concatenated tensor's channels: all channels of one element, in order."""

    elem: int
    width: int
    gated: bool


@dataclass
class Layer:
    node: fx.Node
    module: str
    kind: str  # "conv", "dwconv", "linear" or "bn"
    out_elem: int | None
    in_elem: int | None = None
    in_block: int = 1  # input features per input channel (after a flatten of H x W > 1)
    # A layer reading (or a BN normalising) a concatenation: its channels, run by run.
    in_segments: tuple[Segment, ...] = ()
    out_segments: tuple[Segment, ...] = ()
    conv_groups: int = 1  # a grouped (not depthwise) conv's groups

    def elements(self) -> list[int]:
        """Every element whose channels this layer reads or writes."""
        ends = [e for e in (self.out_elem, self.in_elem) if e is not None]
        return ends + [s.elem for s in (*self.in_segments, *self.out_segments)]


@dataclass
class Analysis:
    """The state of one walk over the graph: an element and a gated flag per tensor node,
    and every conv/linear/BN met. The rules change it only through the methods below."""

    modules: dict[str, nn.Module]
    uf: UnionFind = field(default_factory=UnionFind)
    elem: dict[fx.Node, int] = field(default_factory=dict)
    gated: dict[fx.Node, bool] = field(default_factory=dict)
    # Tensors that are a map of C channels flattened into C x block features; only
    # pass-through ops and linear layers may read them (see rules.reads_blocks).
    block: dict[fx.Node, int] = field(default_factory=dict)
    # Concatenations: their channels as runs of whole elements (a node here has no elem);
    # only the ops rules.reads_segments allows may read them.
    segments: dict[fx.Node, tuple[Segment, ...]] = field(default_factory=dict)
    # Token maps (N x ... x C, channels last: ConvNeXt's MLP between its linear layers);
    # only linear layers and elementwise activations may read them (rules.reads_tokens).
    tokens: set[fx.Node] = field(default_factory=set)
    layers: list[Layer] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    adds: set[fx.Node] = field(default_factory=set)
    ungated_reads: list[tuple[str, int]] = field(default_factory=list)
    indirect: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason): whole
    # Producers whose outputs carry the gates of a group no BN carries (a second walk
    # sets them: whether a group has a BN is known only after the first).
    output_gates: frozenset[str] = frozenset()

    def whole(self, node: fx.Node, reason: str) -> None:
        """Leave the channels of ``node``'s tensor whole, for ``reason``."""
        if node in self.elem:
            self.uf.make_whole(self.elem[node], reason)
        for segment in self.segments.get(node, ()):
            self.uf.make_whole(segment.elem, reason)

    def fresh(self, node: fx.Node, whole_reason: str | None = None) -> None:
        """``node``'s channels are a new element (whole when a reason is given)."""
        width = channels(node)
        if width is None:
            return
        self.elem[node] = self.uf.new(width)
        self.gated[node] = False
        if whole_reason:
            self.uf.make_whole(self.elem[node], whole_reason)

    def produce(
        self,
        node: fx.Node,
        layer: str,
        kind: str,
        source: fx.Node | None,
        width: int | None = None,
    ) -> None:
        """A channel-mixing layer makes ``node``'s channels (``width``: dim 1's by default)
        from ``source``'s."""
        self.read(layer, source)
        self.elem[node] = self.uf.new(width or channels(node), layer)
        self.gated[node] = layer in self.output_gates
        block = self.block.get(source, 1)
        self.layers.append(
            Layer(
                node,
                layer,
                kind,
                self.elem[node],
                self.elem.get(source),
                block,
                in_segments=self.segments.get(source, ()),
            )
        )

    def concatenate(self, node: fx.Node, parts: list[fx.Node]) -> None:
        """``node`` is ``parts`` concatenated on the channels: runs of their elements."""
        runs: list[Segment] = []
        for part in parts:
            if part in self.segments:
                runs.extend(self.segments[part])
            else:
                runs.append(Segment(self.elem[part], channels(part), self.gated[part]))
        self.segments[node] = tuple(runs)

    def normalise_concatenation(self, node: fx.Node, layer: str, source: fx.Node) -> None:
        """A BN over a concatenation: it gates every run (see gates.gated)."""
        runs = tuple(Segment(s.elem, s.width, True) for s in self.segments[source])
        self.segments[node] = runs
        self.layers.append(Layer(node, layer, "bn", None, out_segments=runs))

    def pass_on(self, node: fx.Node, source: fx.Node | None, *, keeps_zero: bool = True) -> None:
        """``node`` carries ``source``'s channels one to one (gated if f(0) == 0)."""
        if source in self.tokens and shape(node) == shape(source):
            self.elem[node] = self.elem[source]
            self.gated[node] = keeps_zero and self.gated[source]
            self.tokens.add(node)
            return
        if source in self.segments and channels(node) == channels(source):
            self.segments[node] = tuple(
                Segment(s.elem, s.width, keeps_zero and s.gated) for s in self.segments[source]
            )
            return
        if source not in self.elem or channels(node) != channels(source):
            self.unknown(node, "changes the channel count")
            return
        self.elem[node] = self.elem[source]
        self.gated[node] = keeps_zero and self.gated[source]
        if source in self.block:
            self.block[node] = self.block[source]

    def flatten_blocks(self, node: fx.Node, source: fx.Node, block: int) -> None:
        """``node`` is ``source``'s C channels flattened into C x ``block`` features."""
        self.elem[node] = self.elem[source]
        self.gated[node] = self.gated[source]
        self.block[node] = block

    def unknown(self, node: fx.Node, why: str = "may mix channels") -> None:
        """An op that may mix channels: its inputs and its output are whole."""
        reason = f"{describe(node)} {why}"
        for source in node.all_input_nodes:
            self.whole(source, reason)
        self.fresh(node, reason)

    def unknown_layer(self, node: fx.Node, layer: str, kind: str, why: str) -> None:
        """A conv/linear that cannot be sliced: wired fixed, its output reported whole."""
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        in_elem = self.elem.get(source)
        self.unknown(node, why)
        if node in self.elem:
            self.uf.producer[self.elem[node]] = layer
        self.layers.append(Layer(node, layer, kind, self.elem.get(node), in_elem))

    def read(self, layer: str, source: fx.Node | None) -> None:
        """A channel-mixing layer reads ``source``: it must be gated if its group is pruned."""
        if source in self.elem and not self.gated[source]:
            self.ungated_reads.append((layer, self.elem[source]))
        for segment in self.segments.get(source, ()):
            if not segment.gated:
                self.ungated_reads.append((layer, segment.elem))

    # -- after the walk
    def producers_without_batchnorm(self) -> frozenset[str]:
        """The convs/linears producing a class that no BN carries: their outputs are
        where that class's gates go."""
        carried = self._classes_with_gates()
        return frozenset(
            x.module
            for x in self.layers
            if x.kind in ("conv", "linear")
            and x.out_elem is not None
            and self.uf.find(x.out_elem) not in carried
        )

    def _classes_with_gates(self) -> set[int]:
        """Classes with a gate point: a BN, or a producer whose output is gated."""
        gated_outputs = {
            self.uf.find(x.out_elem)
            for x in self.layers
            if x.out_elem is not None and (x.kind == "bn" or x.module in self.output_gates)
        }
        return gated_outputs | {self.uf.find(s.elem) for x in self.layers for s in x.out_segments}

    def finish(self) -> None:
        """Leave whole what cannot be gated: no gate point, or read by a layer without a
        gate in between."""
        carried = self._classes_with_gates()
        for layer in self.layers:
            for e in layer.elements():
                if self.uf.find(e) not in carried:
                    self.uf.make_whole(e, NO_GATE)
        for layer, e in self.ungated_reads:
            self.uf.make_whole(e, f"{layer} reads them without a gate in between")

    def whole_report(self) -> tuple[tuple[str, str], ...]:
        """(first producing layer, first reason) of every whole class, then the layers used
        only indirectly; the classes (network output) are fixed by nature, not reported."""
        report = {}
        for e, producer in enumerate(self.uf.producer):
            root = self.uf.find(e)
            reasons = self.uf.reasons.get(root, [])
            if OUTPUT_REASON in reasons:
                continue
            if producer is not None and reasons and root not in report:
                report[root] = (producer, reasons[0])
        return (*report.values(), *self.indirect)


def check_every_layer_reached(model: nn.Module, graph: fx.Graph, analysis: Analysis) -> None:
    """Every conv/linear/BN must be called by the forward pass, or be used inside a layer
    the trace keeps whole (an attention module) or through its parameters (F.linear):
    those are never sliced and are reported whole; a layer not used at all is an error."""
    parameters = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
    missing = []
    for name, m in model.named_modules():
        if not isinstance(m, LAYER_TYPES) or name in analysis.calls:
            continue
        inside_called = any(name.startswith(f"{called}.") for called in analysis.calls)
        if inside_called or any(p.startswith(f"{name}.") for p in parameters):
            analysis.indirect.append((name, "used inside another layer or by its parameters"))
        else:
            missing.append(name)
    if missing:
        raise DiscoveryError(
            f"{type(model).__name__}: layer(s) {missing[:5]} are never used by the traced "
            "forward pass, so their channels cannot be placed in a group; remove unused "
            "layers (e.g. auxiliary heads) from the model or give it a channel_layout()."
        )
