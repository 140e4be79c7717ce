"""Per-operator rules: how each op moves channel elements through the graph.

A rule reads one node and changes the ``Analysis`` through its methods: ``produce`` (a
channel-mixing layer makes new channels), ``pass_on`` (one to one, gated if f(0) == 0),
``unknown`` (may mix channels: whole), or a union of elements. A new operator is one rule
registered in ``MODULE_RULES``, ``FUNCTION_RULES`` or ``METHOD_RULES``; anything without
a rule is assumed to mix channels and left whole.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.pruning.discovery.elements import LAYER_TYPES, OUTPUT_REASON, Analysis, Layer
from pipeline.pruning.discovery.tracing import argument, shape

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
POOLING_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ELEMENTWISE_MODULES = tuple(m for m in PASS_MODULES if not issubclass(m, POOLING_MODULES))
POOLING_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
# Channel-preserving, but f(0) != 0: a masked channel comes out non-zero (SE's scales).
UNGATING_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
UNGATING_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
UNGATING_METHODS = {"sigmoid"}
ADD_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
ADD_METHODS = {"add", "add_", "sub", "sub_"}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
MUL_METHODS = {"mul", "mul_"}
# Ops that only read a tensor's metadata (x.size(0), x.shape): no channel flows.
METADATA_METHODS = {"size", "dim"}
METADATA_FUNCTIONS = {getattr}


def module_keeps_zero(module: nn.Module) -> bool:
    """Whether a channel-preserving module maps 0 to 0: a clamp (Hardtanh, ReLU6) only
    when its range contains 0 (Hardtanh(0.1, 6) lifts a masked channel to 0.1)."""
    if isinstance(module, nn.Hardtanh):
        return module.min_val <= 0 <= module.max_val
    return True


def call_keeps_zero(node: fx.Node) -> bool:
    """Whether a channel-preserving function call maps 0 to 0 (see ``module_keeps_zero``)."""
    if node.target is F.hardtanh:
        low = argument(node, 1, "min_val", -1.0)
        high = argument(node, 2, "max_val", 1.0)
        return isinstance(low, int | float) and isinstance(high, int | float) and low <= 0 <= high
    return True


def apply(a: Analysis, node: fx.Node) -> None:
    """Move ``node``'s channel elements by the rule of its op."""
    if node.op.startswith("call_") and reads_blocks(a, node) and not _feature_wise(a, node):
        a.unknown(node, "reads channels flattened with their map (only a linear layer may)")
    elif node.op.startswith("call_") and reads_segments(a, node) and not _segment_aware(a, node):
        a.unknown(node, "reads concatenated channels")
    elif node.op.startswith("call_") and reads_tokens(a, node) and not _feature_wise(a, node):
        a.unknown(node, "reads a token map (channels last)")
    elif node.op == "placeholder":
        a.fresh(node, "the network input (image channels)")
    elif node.op == "output":
        for source in node.all_input_nodes:
            a.whole(source, OUTPUT_REASON)
    elif node.op == "get_attr":
        a.fresh(node, f"parameter {node.target!r} used outside its module")
    elif node.op == "call_module":
        _apply_module(a, node)
    else:
        rules = METHOD_RULES if node.op == "call_method" else FUNCTION_RULES
        rule = rules.get(node.target)
        if rule is None and node.op == "call_function" and _is_stochastic_depth(node.target):
            rule = _pass_call
        (rule or _mixes_channels)(a, node)


def _apply_module(a: Analysis, node: fx.Node) -> None:
    name = str(node.target)
    module = a.modules[name]
    a.calls[name] = a.calls.get(name, 0) + 1
    if isinstance(module, LAYER_TYPES) and a.calls[name] > 1:
        _shared(a, node, name)
        return
    for types, rule in MODULE_RULES:
        if isinstance(module, types):
            rule(a, node, name, module)
            return
    a.unknown(node)


def reads_blocks(a: Analysis, node: fx.Node) -> bool:
    """Whether ``node`` reads a map flattened into features (channel blocks)."""
    return any(source in a.block for source in node.all_input_nodes)


def reads_tokens(a: Analysis, node: fx.Node) -> bool:
    """Whether ``node`` reads a token map (channels last)."""
    return any(source in a.tokens for source in node.all_input_nodes)


def _feature_wise(a: Analysis, node: fx.Node) -> bool:
    """Ops that may read features laid out other than on dim 1 (channel blocks of a
    flattened map, a token map's last dim): linear layers and elementwise activations
    and dropout (pooling would mix features, which sit where it pools)."""
    if node.op == "call_module":
        module = a.modules[str(node.target)]
        return isinstance(module, (nn.Linear, *ELEMENTWISE_MODULES, *UNGATING_MODULES))
    if node.op == "call_method":
        return node.target in PASS_METHODS | UNGATING_METHODS | METADATA_METHODS
    if node.op == "call_function":
        elementwise = PASS_FUNCTIONS - POOLING_FUNCTIONS
        return node.target in elementwise | UNGATING_FUNCTIONS | METADATA_FUNCTIONS
    return False


def reads_segments(a: Analysis, node: fx.Node) -> bool:
    """Whether ``node`` reads a concatenation (channels in runs of several elements)."""
    return any(source in a.segments for source in node.all_input_nodes)


def _segment_aware(a: Analysis, node: fx.Node) -> bool:
    """Ops whose rules handle a concatenation: channel-mixing layers (sliced by the runs'
    kept indices), BN (gated run by run), one-to-one ops, pooling to features, and cat."""
    if node.op == "call_module":
        module = a.modules[str(node.target)]
        if isinstance(module, nn.Conv2d):
            return module.groups == 1
        one_to_one = (nn.Linear, nn.BatchNorm2d, nn.Flatten, *PASS_MODULES, *UNGATING_MODULES)
        return isinstance(module, one_to_one)
    rules = METHOD_RULES if node.op == "call_method" else FUNCTION_RULES
    return rules.get(node.target) in _SEGMENT_AWARE_CALLS


def _source(node: fx.Node) -> fx.Node | None:
    return node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None


# --- module rules ------------------------------------------------------------------------


def _shared(a: Analysis, node: fx.Node, name: str) -> None:
    """A layer called again (shared weights): one module cannot be sliced two ways."""
    reason = f"layer {name!r} is called more than once (shared weights)"
    a.unknown(node, "is called more than once (shared weights)")
    for layer in a.layers:
        for e in (layer.out_elem, layer.in_elem) if layer.module == name else ():
            if e is not None:
                a.uf.make_whole(e, reason)


def _conv(a: Analysis, node: fx.Node, name: str, conv: nn.Conv2d) -> None:
    source = _source(node)
    if conv.groups == 1:
        a.produce(node, name, "conv", source)
    elif conv.groups == conv.in_channels == conv.out_channels:
        # depthwise: one filter per channel, so its input and output are one group
        a.pass_on(node, source, keeps_zero=conv.bias is None)
        a.layers.append(Layer(node, name, "dwconv", a.elem[node], a.elem[node]))
    elif source in a.elem:
        # grouped: prunable when every conv group keeps the same channels of its tile
        a.uf.tile(a.elem[source], conv.groups)
        a.produce(node, name, "conv", source)
        a.uf.tile(a.elem[node], conv.groups)
        a.layers[-1].conv_groups = conv.groups
    else:
        a.unknown_layer(node, name, "conv", f"is a grouped convolution (groups={conv.groups})")


def _linear(a: Analysis, node: fx.Node, name: str, linear: nn.Linear) -> None:
    source = _source(node)
    if len(shape(source) or ()) == 2:
        a.produce(node, name, "linear", source)
    elif source in a.tokens or shape(source) is not None:
        _token_linear(a, node, name, linear, source)
    else:
        a.unknown_layer(node, name, "linear", "is a linear layer on an unknown tensor")


def _token_linear(a: Analysis, node: fx.Node, name: str, linear: nn.Linear, source) -> None:
    """A linear layer on a token map (N x ... x C, ConvNeXt's MLP): its output features
    are a new element on the last dim; it reads a token element's features, or, from any
    other tensor (LayerNorm over permuted channels), its last dim whole."""
    if source not in a.tokens:
        a.whole(source, f"layer {name!r} is a linear layer on a tensor that is not N x features")
    a.produce(node, name, "linear", source if source in a.tokens else None, linear.out_features)
    a.tokens.add(node)


def _batch_norm(a: Analysis, node: fx.Node, name: str, _bn: nn.BatchNorm2d) -> None:
    if _source(node) in a.segments:
        a.normalise_concatenation(node, name, _source(node))
        return
    a.pass_on(node, _source(node))
    a.gated[node] = True  # the group's gates sit on BN outputs
    a.layers.append(Layer(node, name, "bn", a.elem.get(node)))


def _pass_module(a: Analysis, node: fx.Node, _name: str, module: nn.Module) -> None:
    a.pass_on(node, _source(node), keeps_zero=module_keeps_zero(module))


def _ungating_module(a: Analysis, node: fx.Node, _name: str, _module: nn.Module) -> None:
    a.pass_on(node, _source(node), keeps_zero=False)


def _flatten_module(a: Analysis, node: fx.Node, _name: str, module: nn.Flatten) -> None:
    _flatten(a, node, module.start_dim, module.end_dim)


# --- function and method rules -----------------------------------------------------------


def _mixes_channels(a: Analysis, node: fx.Node) -> None:
    a.unknown(node)


def _metadata(_a: Analysis, _node: fx.Node) -> None:
    """x.size(), x.dim(): no channel flows."""


def _pass_call(a: Analysis, node: fx.Node) -> None:
    a.pass_on(node, _source(node), keeps_zero=call_keeps_zero(node))


def _ungating_call(a: Analysis, node: fx.Node) -> None:
    a.pass_on(node, _source(node), keeps_zero=False)


def _add(a: Analysis, node: fx.Node) -> None:
    _elementwise(a, node, joins_sum=True)


def _mul(a: Analysis, node: fx.Node) -> None:
    _elementwise(a, node, joins_sum=False)


def _elementwise(a: Analysis, node: fx.Node, *, joins_sum: bool) -> None:
    """add/sub/mul: operands aligned on the channel dim are joined into one group."""
    out = shape(node)
    if out is None or len(out) < 2:
        a.unknown(node)
        return
    joined, gates, extra = [], [], False
    for operand in node.args:
        operand_shape = shape(operand) if isinstance(operand, fx.Node) else None
        if operand_shape is None:
            extra = extra or not (joins_sum and operand == 0)
            continue
        offset = len(out) - len(operand_shape)
        if 1 - offset < 0 or operand_shape[1 - offset] == 1:
            extra = True  # broadcast over the channels: joins nothing
        elif offset == 0 and operand in a.elem:
            joined.append(a.elem[operand])
            gates.append(a.gated[operand])
        else:
            a.unknown(node, "multiplies by a per-channel tensor of another rank")
            return
    if not joined:
        a.fresh(node)
        return
    root = joined[0]
    for e in joined[1:]:
        root = a.uf.union(root, e)
    if joins_sum and len(joined) > 1:
        a.uf.coupled.add(a.uf.find(root))
        a.adds.add(node)
    a.elem[node] = joined[0]
    # A sum is zero where every term is; a product where any factor is.
    a.gated[node] = (all(gates) and not extra) if joins_sum else any(gates)


def _flatten_call(a: Analysis, node: fx.Node) -> None:
    _flatten(a, node, argument(node, 1, "start_dim", 0), argument(node, 2, "end_dim", -1))


def _flatten(a: Analysis, node: fx.Node, start: int, end: int) -> None:
    """N x C x H x W -> N x (C H W): channel c becomes the features c*HW .. c*HW + HW - 1,
    a block a linear layer reading them slices whole (VGG's and AlexNet's classifiers)."""
    source = _source(node)
    before = shape(source)
    if before is None or start != 1 or end not in (-1, len(before) - 1):
        a.unknown(node, "flattens other dimensions than the channels and the map")
        return
    spatial = 1
    for side in before[2:]:
        spatial *= side
    if spatial == 1:
        a.pass_on(node, source)
    elif source in a.elem:
        a.flatten_blocks(node, source, spatial)
    else:
        a.unknown(node, "flattens a concatenation's map into features")


def _reshape(a: Analysis, node: fx.Node) -> None:
    source = _source(node)
    before, after = shape(source), shape(node)
    if (
        before is not None
        and after is not None
        and len(after) == 2
        and before[0] == after[0]
        and after[1] == before[1]
    ):
        a.pass_on(node, source)  # N x C x 1 x 1 -> N x C
    else:
        a.unknown(node, "reshapes the channel dimension")


def _mean(a: Analysis, node: fx.Node) -> None:
    source = _source(node)
    dims = argument(node, 1, "dim", None)
    dims = (dims,) if isinstance(dims, int) else dims
    ndim = len(shape(source) or ())
    if dims is not None and ndim > 2 and all(d % ndim > 1 for d in dims):
        a.pass_on(node, source)  # a spatial mean (global average pooling)
    else:
        a.unknown(node, "averages over the channels")


def _concatenate(a: Analysis, node: fx.Node) -> None:
    """torch.cat on the channels: the output is the inputs' elements run after run, and
    each layer reading it is sliced with every run's kept indices at the run's offset."""
    parts = argument(node, 0, "tensors", ())
    dim = argument(node, 1, "dim", 0)
    out = shape(node)
    known = isinstance(parts, list | tuple) and all(
        isinstance(p, fx.Node) and (p in a.elem or p in a.segments) and p not in a.block
        for p in parts
    )
    if out is None or not known or not isinstance(dim, int) or dim % len(out) != 1:
        a.unknown(node, "concatenates other than the channels of channel maps")
    elif len(parts) == 1:
        a.pass_on(node, parts[0])  # DenseNet's first layer: a concatenation of one
    else:
        a.concatenate(node, list(parts))


def _is_stochastic_depth(target) -> bool:
    """torchvision's stochastic depth (EfficientNet, ConvNeXt): identity in eval, and in
    training a per-sample factor; matched by name so torchvision need not be imported."""
    module = getattr(target, "__module__", "") or ""
    return getattr(target, "__name__", "") == "stochastic_depth" and module.startswith(
        "torchvision.ops"
    )


ModuleRule = Callable[[Analysis, fx.Node, str, nn.Module], None]
CallRule = Callable[[Analysis, fx.Node], None]

# First match wins (ReLU6 is a Hardtanh; the conv rule sees every Conv2d).
MODULE_RULES: list[tuple[type | tuple[type, ...], ModuleRule]] = [
    (nn.Conv2d, _conv),
    (nn.Linear, _linear),
    (nn.BatchNorm2d, _batch_norm),
    (PASS_MODULES, _pass_module),
    (UNGATING_MODULES, _ungating_module),
    (nn.Flatten, _flatten_module),
]


def _table(*entries: tuple[object, CallRule]) -> dict:
    table = {}
    for targets, rule in entries:
        for target in targets:
            table[target] = rule
    return table


FUNCTION_RULES: dict[object, CallRule] = _table(
    (METADATA_FUNCTIONS, _metadata),
    (ADD_FUNCTIONS, _add),
    (MUL_FUNCTIONS, _mul),
    (PASS_FUNCTIONS, _pass_call),
    (UNGATING_FUNCTIONS, _ungating_call),
    ({torch.flatten}, _flatten_call),
    ({torch.reshape}, _reshape),
    ({torch.mean}, _mean),
    ({torch.cat, torch.concat, torch.concatenate}, _concatenate),
)
METHOD_RULES: dict[str, CallRule] = _table(
    (METADATA_METHODS, _metadata),
    (ADD_METHODS, _add),
    (MUL_METHODS, _mul),
    (PASS_METHODS, _pass_call),
    (UNGATING_METHODS, _ungating_call),
    ({"flatten"}, _flatten_call),
    ({"view", "reshape"}, _reshape),
    ({"mean"}, _mean),
)

# The call rules that handle a concatenation (see _segment_aware).
_SEGMENT_AWARE_CALLS = {
    _metadata,
    _pass_call,
    _ungating_call,
    _flatten_call,
    _reshape,
    _mean,
    _concatenate,
}
