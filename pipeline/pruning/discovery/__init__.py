"""Channel groups discovered from a model's traced graph.

``discover_layout(model, input_shape)`` derives the ``ChannelLayout`` of a model that
does not write one by hand. The model is traced with ``torch.fx.symbolic_trace`` and run
once on a zeros batch (as fx's ``ShapeProp``) to learn every tensor's channel count. Every
tensor's channels (dim 1) start as an *element*: a conv or linear layer makes a new one,
channel-preserving ops (BN, activations, pooling, depthwise convs) pass theirs on, and
ops that join tensors channel by channel (residual ``add``, squeeze-and-excitation
``mul``) unite theirs in a union-find. Each resulting class is one channel group.

Why torch.fx and not torch.export: fx keeps leaf modules as ``call_module`` nodes named
by their qualified names (the state_dict keys the layout must name), traces in
milliseconds on the CPU or the meta device, and torchvision's classification CNNs
trace; torch.export is slower and lowers modules to aten ops, losing those names.

A class is left *whole* (its channels fixed, never sliced) when it is not provably safe
to prune, with the reason recorded: it reaches the network input or output, a
concatenation, a grouped conv that is not depthwise, a reshaping op (channel shuffle,
permute), a normalisation other than BatchNorm, or any op not listed here (assumed to mix
channels); no BatchNorm carries it (JST's gates and slimming need one); or a channel-
mixing layer reads it without a BatchNorm gate in between (a 0/1 gate there would not
make the masked dense model equal the sliced one). Being whole spreads through the
union-find to every element joined with a whole one.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from pipeline.errors import ConfigError
from pipeline.models.registry import PROBE_BATCH  # the one zeros batch models are probed with
from pipeline.pruning.groups import ChannelGroup, ChannelLayout

# Channel-preserving modules and functions. All map 0 to 0 (a masked channel stays zero)
# except a clamp whose range excludes 0: module_keeps_zero / call_keeps_zero decide.
PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Mish,
    nn.ELU,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    F.relu,
    F.relu6,
    F.hardtanh,
    F.hardswish,
    F.silu,
    F.gelu,
    F.mish,
    F.elu,
    F.leaky_relu,
    F.dropout,
    F.dropout2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
PASS_METHODS = {"relu", "relu_", "tanh", "contiguous"}
# Channel-preserving, but f(0) != 0: a masked channel comes out non-zero (SE's scales).
_UNGATING_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_UNGATING_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_UNGATING_METHODS = {"sigmoid"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_"}
# Ops that only read a tensor's metadata (x.size(0), x.shape): no channel flows.
_METADATA_METHODS = {"size", "dim"}
_METADATA_FUNCTIONS = {getattr}
_OUTPUT_REASON = "the network output (the classes)"


class DiscoveryError(ConfigError):
    """The model's channel groups cannot be discovered (tracing or the probe run fails)."""


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
    graph = _traced(model, tuple(input_shape))
    analysis = _Analysis(dict(model.named_modules()))
    for node in graph.nodes:
        analysis.visit(node)
    _check_every_layer_reached(model, graph, analysis)
    analysis.finish()
    return Discovery(_Builder(analysis, graph).layout(), analysis.whole_report())


# --- tracing -----------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """fx's tracer, remembering the module being traced so a failure can name it."""

    def __init__(self):
        super().__init__()
        self._layer_path: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        self._layer_path.append(self.path_of_module(m) or type(m).__name__)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self._layer_path[-1]
            raise
        finally:
            self._layer_path.pop()


def _traced(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.Graph:
    tracer = _Tracer()
    name = type(model).__name__
    try:
        graph = tracer.trace(model)
    except Exception as err:
        where = f"in layer {tracer.failed_in!r}" if tracer.failed_in else "in its forward"
        raise DiscoveryError(
            f"cannot trace {name} with torch.fx {where} ({type(err).__name__}: "
            f"{str(err)[:300]}); channel groups are found by tracing the forward pass, which "
            "fails on control flow that depends on tensor values: make that code "
            "independent of the data, or give the model a channel_layout() method."
        ) from None
    module = fx.GraphModule(model, graph)
    parameters = [*model.parameters(), *model.buffers()]
    device = parameters[0].device if parameters else torch.device("cpu")
    probe = torch.zeros(PROBE_BATCH, *input_shape, device=device)
    modes = {m: m.training for m in model.modules()}  # restored as they were, one by one
    module.eval()  # the probe must not move BN running statistics
    try:
        with torch.no_grad():
            _ShapeRecorder(module).run(probe)
    except _ProbeFailure as failure:
        raise DiscoveryError(
            f"{name} fails on a {PROBE_BATCH} x {' x '.join(map(str, input_shape))} zeros "
            f"batch in {_describe(failure.node)} while its channel groups are discovered "
            f"({type(failure.error).__name__}: {str(failure.error)[:300]}); check that the "
            "model accepts the data's channels and image size."
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training
    return graph


class _ProbeFailure(Exception):
    def __init__(self, node: fx.Node, error: Exception):
        super().__init__(str(error))
        self.node, self.error = node, error


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and records every tensor's metadata on its node, as fx's
    ShapeProp does, but reports a failing node without printing a traceback."""

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
        except Exception as err:
            raise _ProbeFailure(n, err) from err
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result


def _check_every_layer_reached(model: nn.Module, graph: fx.Graph, analysis: _Analysis) -> None:
    """Every conv/linear/BN must be called by the forward pass, or be used inside a layer
    the trace keeps whole (an attention module) or through its parameters (F.linear):
    those are never sliced and are reported whole; a layer not used at all is an error."""
    parameters = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
    missing = []
    for name, m in model.named_modules():
        if not isinstance(m, _LAYER_TYPES) or name in analysis.calls:
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


_LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


# --- analysis ----------------------------------------------------------------------------


class _UnionFind:
    """Channel elements; each class is a group, whole (with reasons) or prunable."""

    def __init__(self):
        self.parent: list[int] = []
        self.width: list[int] = []
        self.producer: list[str | None] = []  # the conv/linear that made the element
        self.reasons: dict[int, list[str]] = {}
        self.coupled: set[int] = set()

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
        return ra

    def make_whole(self, e: int, reason: str) -> None:
        self.reasons.setdefault(self.find(e), []).append(reason)

    def is_whole(self, e: int) -> bool:
        return bool(self.reasons.get(self.find(e)))


@dataclass
class _Layer:
    node: fx.Node
    module: str
    kind: str  # "conv", "dwconv", "linear" or "bn"
    out_elem: int | None
    in_elem: int | None = None


@dataclass
class _Analysis:
    """Walks the graph once: an element and a gated flag per tensor node."""

    modules: dict[str, nn.Module]
    uf: _UnionFind = field(default_factory=_UnionFind)
    elem: dict[fx.Node, int] = field(default_factory=dict)
    gated: dict[fx.Node, bool] = field(default_factory=dict)
    layers: list[_Layer] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    adds: set[fx.Node] = field(default_factory=set)
    ungated_reads: list[tuple[str, int]] = field(default_factory=list)
    indirect: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason): whole

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self._fresh(node, "the network input (image channels)")
        elif node.op == "output":
            for source in node.all_input_nodes:
                self._whole(source, _OUTPUT_REASON)
        elif node.op == "get_attr":
            self._fresh(node, f"parameter {node.target!r} used outside its module")
        elif node.op == "call_module":
            self._module(node, self.modules[node.target])
        else:
            self._function(node)

    # -- helpers
    def _whole(self, node: fx.Node, reason: str) -> None:
        if node in self.elem:
            self.uf.make_whole(self.elem[node], reason)

    def _fresh(self, node: fx.Node, whole_reason: str | None = None) -> None:
        channels = _channels(node)
        if channels is None:
            return
        self.elem[node] = self.uf.new(channels)
        self.gated[node] = False
        if whole_reason:
            self.uf.make_whole(self.elem[node], whole_reason)

    def _pass(self, node: fx.Node, source: fx.Node, *, keeps_zero: bool = True) -> None:
        if source not in self.elem or _channels(node) != _channels(source):
            self._unknown(node, "changes the channel count")
            return
        self.elem[node] = self.elem[source]
        self.gated[node] = keeps_zero and self.gated[source]

    def _unknown(self, node: fx.Node, why: str = "may mix channels") -> None:
        reason = f"{_describe(node)} {why}"
        for source in node.all_input_nodes:
            self._whole(source, reason)
        self._fresh(node, reason)

    # -- modules
    def _module(self, node: fx.Node, module: nn.Module) -> None:
        name = str(node.target)
        self.calls[name] = self.calls.get(name, 0) + 1
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(module, _LAYER_TYPES) and self.calls[name] > 1:
            self._shared(node, name)
        elif isinstance(module, nn.Conv2d):
            self._conv(node, name, module, source)
        elif isinstance(module, nn.Linear):
            self._linear(node, name, source)
        elif isinstance(module, nn.BatchNorm2d):
            self._pass(node, source)
            self.gated[node] = True
            self.layers.append(_Layer(node, name, "bn", self.elem.get(node)))
        elif isinstance(module, PASS_MODULES):
            self._pass(node, source, keeps_zero=module_keeps_zero(module))
        elif isinstance(module, _UNGATING_MODULES):
            self._pass(node, source, keeps_zero=False)
        elif isinstance(module, nn.Flatten):
            self._flatten(node, source, module.start_dim, module.end_dim)
        else:
            self._unknown(node)

    def _shared(self, node: fx.Node, name: str) -> None:
        """A layer called again (shared weights): one module cannot be sliced two ways."""
        reason = f"layer {name!r} is called more than once (shared weights)"
        self._unknown(node, "is called more than once (shared weights)")
        for layer in self.layers:
            for e in (layer.out_elem, layer.in_elem) if layer.module == name else ():
                if e is not None:
                    self.uf.make_whole(e, reason)

    def _conv(self, node: fx.Node, name: str, conv: nn.Conv2d, source: fx.Node) -> None:
        in_elem = self.elem.get(source)
        if conv.groups == 1:
            self._read(name, source)
            self.elem[node] = self.uf.new(conv.out_channels, name)
            self.gated[node] = False
            self.layers.append(_Layer(node, name, "conv", self.elem[node], in_elem))
        elif conv.groups == conv.in_channels == conv.out_channels:
            self._pass(node, source, keeps_zero=conv.bias is None)
            self.layers.append(_Layer(node, name, "dwconv", self.elem[node], self.elem[node]))
        else:
            self._unknown(node, f"is a grouped convolution (groups={conv.groups})")
            self.uf.producer[self.elem[node]] = name  # its output is reported whole too
            self.layers.append(_Layer(node, name, "conv", self.elem[node], in_elem))

    def _linear(self, node: fx.Node, name: str, source: fx.Node) -> None:
        meta = _meta(source)
        if meta is None or len(meta.shape) != 2:
            self._unknown(node, "is a linear layer on a tensor that is not N x features")
            self.uf.producer[self.elem[node]] = name
            self.layers.append(_Layer(node, name, "linear", self.elem.get(node)))
            return
        self._read(name, source)
        self.elem[node] = self.uf.new(_channels(node), name)
        self.gated[node] = False
        self.layers.append(_Layer(node, name, "linear", self.elem[node], self.elem.get(source)))

    def _read(self, layer: str, source: fx.Node) -> None:
        """A channel-mixing layer reads ``source``: it must be gated if its group is pruned."""
        if source in self.elem and not self.gated[source]:
            self.ungated_reads.append((layer, self.elem[source]))

    # -- functions and methods
    def _function(self, node: fx.Node) -> None:
        target = node.target
        is_method = node.op == "call_method"
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if (target in _METADATA_METHODS) if is_method else (target in _METADATA_FUNCTIONS):
            return
        if (target in _ADD_METHODS) if is_method else (target in _ADD_FUNCTIONS):
            self._elementwise(node, joins_sum=True)
        elif (target in _MUL_METHODS) if is_method else (target in _MUL_FUNCTIONS):
            self._elementwise(node, joins_sum=False)
        elif (target in PASS_METHODS) if is_method else _is_pass_function(target):
            self._pass(node, source, keeps_zero=call_keeps_zero(node))
        elif (target in _UNGATING_METHODS) if is_method else (target in _UNGATING_FUNCTIONS):
            self._pass(node, source, keeps_zero=False)
        elif target == "flatten" or target is torch.flatten:
            start = _argument(node, 1, "start_dim", 0)
            self._flatten(node, source, start, _argument(node, 2, "end_dim", -1))
        elif target in ("view", "reshape") or target is torch.reshape:
            self._reshape(node, source)
        elif target == "mean" or target is torch.mean:
            self._mean(node, source)
        elif target is torch.cat:
            self._unknown(node, "concatenates channels")
        else:
            self._unknown(node)

    def _elementwise(self, node: fx.Node, *, joins_sum: bool) -> None:
        """add/sub/mul: operands aligned on the channel dim are joined into one group."""
        out = _meta(node)
        if out is None or len(out.shape) < 2:
            self._unknown(node)
            return
        joined, gates, extra = [], [], False
        for operand in node.args:
            meta = _meta(operand) if isinstance(operand, fx.Node) else None
            if meta is None:
                extra = extra or not (joins_sum and operand == 0)
                continue
            offset = len(out.shape) - len(meta.shape)
            if 1 - offset < 0 or meta.shape[1 - offset] == 1:
                extra = True  # broadcast over the channels: joins nothing
            elif offset == 0 and operand in self.elem:
                joined.append(self.elem[operand])
                gates.append(self.gated[operand])
            else:
                self._unknown(node, "multiplies by a per-channel tensor of another rank")
                return
        if not joined:
            self._fresh(node)
            return
        root = joined[0]
        for e in joined[1:]:
            root = self.uf.union(root, e)
        if joins_sum and len(joined) > 1:
            self.uf.coupled.add(self.uf.find(root))
            self.adds.add(node)
        self.elem[node] = joined[0]
        # A sum is zero where every term is; a product where any factor is.
        self.gated[node] = (all(gates) and not extra) if joins_sum else any(gates)

    def _flatten(self, node: fx.Node, source: fx.Node, start: int, end: int) -> None:
        meta = _meta(source)
        spatial = 1
        for side in meta.shape[2:] if meta is not None else ():
            spatial *= side
        if meta is not None and start == 1 and end in (-1, len(meta.shape) - 1) and spatial == 1:
            self._pass(node, source)
        else:
            self._unknown(node, "flattens a feature map larger than 1x1 into features")

    def _reshape(self, node: fx.Node, source: fx.Node) -> None:
        before, after = _meta(source), _meta(node)
        if (
            before is not None
            and after is not None
            and len(after.shape) == 2
            and before.shape[0] == after.shape[0]
            and after.shape[1] == before.shape[1]
        ):
            self._pass(node, source)  # N x C x 1 x 1 -> N x C
        else:
            self._unknown(node, "reshapes the channel dimension")

    def _mean(self, node: fx.Node, source: fx.Node) -> None:
        meta = _meta(source)
        dims = _argument(node, 1, "dim", None)
        dims = (dims,) if isinstance(dims, int) else dims
        ndim = len(meta.shape) if meta is not None else 0
        if dims is not None and ndim > 2 and all(d % ndim > 1 for d in dims):
            self._pass(node, source)  # a spatial mean (global average pooling)
        else:
            self._unknown(node, "averages over the channels")

    # -- after the walk
    def finish(self) -> None:
        """Leave whole what cannot be gated: no BN, or read by a layer without a gate."""
        carried = {
            self.uf.find(x.out_elem)
            for x in self.layers
            if x.kind == "bn" and x.out_elem is not None
        }
        for layer in self.layers:
            for e in (layer.out_elem, layer.in_elem):
                if e is not None and self.uf.find(e) not in carried:
                    self.uf.make_whole(e, "no BatchNorm carries these channels (gates need one)")
        for layer, e in self.ungated_reads:
            self.uf.make_whole(e, f"{layer} reads them without a BatchNorm gate in between")

    def whole_report(self) -> tuple[tuple[str, str], ...]:
        report = {}
        for e, producer in enumerate(self.uf.producer):
            root = self.uf.find(e)
            reasons = self.uf.reasons.get(root, [])
            if _OUTPUT_REASON in reasons:
                continue  # the classes: fixed by nature, not a limitation
            if producer is not None and reasons and root not in report:
                report[root] = (producer, reasons[0])
        return (*report.values(), *self.indirect)


def module_keeps_zero(module: nn.Module) -> bool:
    """Whether a channel-preserving module maps 0 to 0: a clamp (Hardtanh, ReLU6) only
    when its range contains 0 (Hardtanh(0.1, 6) lifts a masked channel to 0.1)."""
    if isinstance(module, nn.Hardtanh):
        return module.min_val <= 0 <= module.max_val
    return True


def call_keeps_zero(node: fx.Node) -> bool:
    """Whether a channel-preserving function call maps 0 to 0 (see ``module_keeps_zero``)."""
    if node.target is F.hardtanh:
        low = _argument(node, 1, "min_val", -1.0)
        high = _argument(node, 2, "max_val", 1.0)
        return isinstance(low, int | float) and isinstance(high, int | float) and low <= 0 <= high
    return True


def _is_pass_function(target) -> bool:
    if target in PASS_FUNCTIONS:
        return True
    # torchvision's stochastic depth (EfficientNet, ConvNeXt): identity in eval, and in
    # training a per-sample factor; matched by name so torchvision need not be imported.
    module = getattr(target, "__module__", "") or ""
    return getattr(target, "__name__", "") == "stochastic_depth" and module.startswith(
        "torchvision.ops"
    )


def _meta(node) -> TensorMetadata | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta if isinstance(meta, TensorMetadata) else None


def _channels(node: fx.Node) -> int | None:
    meta = _meta(node)
    return int(meta.shape[1]) if meta is not None and len(meta.shape) >= 2 else None


def _argument(node: fx.Node, position: int, keyword: str, default):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    target = getattr(node.target, "__name__", node.target)  # a function's name, or a method's
    return f"{target!r} (node {node.name!r})"


# --- building the layout -----------------------------------------------------------------


@dataclass
class _Builder:
    analysis: _Analysis
    graph: fx.Graph

    def __post_init__(self):
        self.order = {node: i for i, node in enumerate(self.graph.nodes)}
        self.bn_nodes = {x.node for x in self.analysis.layers if x.kind == "bn"}

    def layout(self) -> ChannelLayout:
        uf = self.analysis.uf
        names = self._group_names()
        layout = ChannelLayout()
        for root, name in names.items():
            layout.groups[name] = ChannelGroup(name, uf.width[root], root in uf.coupled)
        for layer in self.analysis.layers:
            out_group = self._group_of(layer.out_elem, names)
            in_group = self._group_of(layer.in_elem, names)
            layout.wire(layer.module, layer.kind, out_group, in_group)
        self._attach_bns_and_scores(layout, names)
        return layout

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
            # No producer reaches a BN of its own: let them all score, with every BN.
            convs = tuple(c for c, _ in scored[name]) or tuple(producers[name])
            scored_bns = tuple(b for _, b in scored[name]) or tuple(bns[name])
            layout.groups[name] = ChannelGroup(
                name, g.width, g.coupled, convs, scored_bns, tuple(bns[name])
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

    def _projection(self, layer: _Layer) -> bool:
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
