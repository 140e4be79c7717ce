"""Tracing and probing: the model's fx graph, every tensor's shape recorded on its node.

Why torch.fx and not torch.export: fx keeps leaf modules as ``call_module`` nodes named
by their qualified names (the state_dict keys the layout must name), traces in
milliseconds on the CPU or the meta device, and torchvision's classification CNNs
trace; torch.export is slower and lowers modules to aten ops, losing those names.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from pipeline.errors import ConfigError
from pipeline.models.registry import PROBE_BATCH  # the one zeros batch models are probed with


class DiscoveryError(ConfigError):
    """The model's channel groups cannot be discovered (tracing or the probe run fails)."""


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


def traced(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.Graph:
    """``model``'s graph, run once on a zeros batch so every node knows its tensor's shape."""
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
    _probe(model, graph, input_shape)
    return graph


def _probe(model: nn.Module, graph: fx.Graph, input_shape: tuple[int, int, int]) -> None:
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
            f"{type(model).__name__} fails on a {PROBE_BATCH} x "
            f"{' x '.join(map(str, input_shape))} zeros batch in {describe(failure.node)} "
            f"while its channel groups are discovered ({type(failure.error).__name__}: "
            f"{str(failure.error)[:300]}); check that the model accepts the data's channels "
            "and image size."
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training


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


# --- what the probe recorded -------------------------------------------------------------


def meta(node) -> TensorMetadata | None:
    found = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return found if isinstance(found, TensorMetadata) else None


def shape(node) -> tuple[int, ...] | None:
    found = meta(node)
    return tuple(int(n) for n in found.shape) if found is not None else None


def channels(node: fx.Node) -> int | None:
    found = shape(node)
    return found[1] if found is not None and len(found) >= 2 else None


def argument(node: fx.Node, position: int, keyword: str, default):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    target = getattr(node.target, "__name__", node.target)  # a function's name, or a method's
    return f"{target!r} (node {node.name!r})"
