"""The layout: the channel classes that stayed prunable become named groups, every
conv/linear/BN is wired, and each group's scored producers and BNs are found."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import fx

from pipeline.pruning.discovery.elements import Analysis, Layer, Segment
from pipeline.pruning.groups import ChannelGroup, ChannelLayout


@dataclass
class LayoutBuilder:
    analysis: Analysis
    graph: fx.Graph

    def __post_init__(self):
        self.order = {node: i for i, node in enumerate(self.graph.nodes)}
        self.bn_nodes = {x.node for x in self.analysis.layers if x.kind == "bn"}

    def layout(self) -> ChannelLayout:
        uf = self.analysis.uf
        names = self._group_names()
        layout = ChannelLayout()
        for root, name in names.items():
            tiles = uf.tiles.get(root, 1)
            layout.groups[name] = ChannelGroup(
                name, uf.width[root] // tiles, root in uf.coupled, tiles=tiles
            )
        for layer in self.analysis.layers:
            out_group = self._group_of(layer.out_elem, names)
            in_group = self._group_of(layer.in_elem, names)
            in_block = layer.in_block if in_group is not None else 1
            layout.wire(
                layer.module,
                layer.kind,
                out_group,
                in_group,
                in_block,
                in_segments=self._runs(layer.in_segments, names),
                out_segments=self._runs(layer.out_segments, names),
                conv_groups=layer.conv_groups,
            )
        self._attach_bns_and_scores(layout, names)
        return layout

    def _runs(self, segments: tuple[Segment, ...], names: dict[int, str]) -> tuple:
        """A concatenation's runs as (group or None when whole, dense width); none at all
        when every run is whole (the layer is then fixed on that side)."""
        runs = tuple((self._group_of(s.elem, names), s.width) for s in segments)
        return runs if any(group is not None for group, _ in runs) else ()

    def _group_names(self) -> dict[int, str]:
        """Prunable classes, in graph order, named after their first producing layer."""
        uf, names = self.analysis.uf, {}
        for e, producer in enumerate(uf.producer):
            root = uf.find(e)
            if producer is not None and not uf.is_whole(root) and root not in names:
                names[root] = producer
        return names

    def _group_of(self, e: int | None, names: dict[int, str]) -> str | None:
        return None if e is None else names.get(self.analysis.uf.find(e))

    def _attach_bns_and_scores(self, layout: ChannelLayout, names: dict[int, str]) -> None:
        bns: dict[str, list[str]] = {n: [] for n in names.values()}
        scored: dict[str, list[tuple[str, str]]] = {n: [] for n in names.values()}
        producers: dict[str, list[str]] = {n: [] for n in names.values()}
        for layer in self.analysis.layers:
            group = self._group_of(layer.out_elem, names)
            if group is None:
                continue
            if layer.kind == "bn":
                bns[group].append(layer.module)
                continue
            bn = self._bn_after(layer.node)
            if bn is not None and not (
                layout.groups[group].coupled and layer.kind != "dwconv" and self._projection(layer)
            ):
                scored[group].append((layer.module, str(bn.target)))
            producers[group].append(layer.module)
        for name, g in layout.groups.items():
            # No producer reaches a BN of its own: let them all score, with every BN (none
            # in a group gated on its producers' outputs: slimming cannot score it).
            convs = tuple(c for c, _ in scored[name]) or tuple(producers[name])
            scored_bns = tuple(b for _, b in scored[name]) or tuple(bns[name])
            output_gates = tuple(p for p in producers[name] if p in self.analysis.output_gates)
            layout.groups[name] = replace(
                g,
                scored_convs=convs,
                scored_bns=scored_bns,
                bns=tuple(bns[name]),
                output_gates=output_gates,
            )

    def _bn_after(self, node: fx.Node) -> fx.Node | None:
        """The BN that alone reads a producer's output, maybe after channel-preserving ops
        (conv -> ReLU -> BN): the producer's filters and that BN's gammas score the group."""
        elem = self.analysis.elem
        while len(node.users) == 1:
            user = next(iter(node.users))
            if user in self.bn_nodes:
                return user
            if elem.get(user) is None or elem.get(user) != elem.get(node):
                return None
            node = user
        return None

    def _projection(self, layer: Layer) -> bool:
        """A shortcut branch: the producer's input also reaches the residual ``add`` its
        output joins by another path (the block's main branch), as a projection does."""
        add = self._first_add(layer.node)
        if add is None or not isinstance(layer.node.args[0], fx.Node):
            return False
        own = self._operand_from(add, layer.node)
        others = [a for a in add.all_input_nodes if a is not own]
        return any(self._reaches(layer.node.args[0], o, avoid=layer.node) for o in others)

    def _first_add(self, node: fx.Node) -> fx.Node | None:
        """The residual add a producer's output reaches through channel-preserving ops."""
        elem = self.analysis.elem
        seen, frontier = {node}, [node]
        while frontier:
            current = frontier.pop()
            for user in current.users:
                if user in self.analysis.adds:
                    return user
                if user not in seen and elem.get(user) == elem.get(node):
                    seen.add(user)
                    frontier.append(user)
        return None

    def _operand_from(self, add: fx.Node, producer: fx.Node) -> fx.Node | None:
        return next(
            (a for a in add.all_input_nodes if self._reaches(producer, a, avoid=None)), None
        )

    def _reaches(self, start: fx.Node, target: fx.Node, avoid: fx.Node | None) -> bool:
        """Whether a path leads from ``start`` to ``target`` without passing ``avoid``."""
        order = self.order
        seen, frontier = {start}, [start]
        while frontier:
            current = frontier.pop()
            if current is target:
                return True
            for user in current.users:
                # nodes after the target in graph order cannot lead back to it
                if user is not avoid and user not in seen and order[user] <= order[target]:
                    seen.add(user)
                    frontier.append(user)
        return False
