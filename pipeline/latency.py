"""A latency model of the deployment runtime: predicted ms for any assignment of widths.

FLOPs are not time: ONNX Runtime's CPU kernels compute channels in blocks, and
activations, additions and layout changes cost time that no multiply counts. The model
here is measured. Every conv and linear layer of the dense network is built alone as a
tiny ONNX graph (conv + ReLU, or Gemm) at the widths the search can choose, and timed on
the deployment runtime (provider, threads, batch). Widths between measured points are
interpolated bilinearly. The sum over layers misses what lies between them (residual
additions, pooling, the call itself) and counts per-graph costs once per layer, so it is
calibrated on whole networks: ``predicted = a * layer_sum + b``, with ``a`` and ``b``
fitted on the dense network and a uniformly thinned one, both exported and measured.

Layer timings are cached in a JSON file named by the runtime, provider, processor,
threads and batch (``cache_key``), so a rerun on the same machine measures nothing
again; a different runtime version or machine gets its own file.

ONNX Runtime is imported here only: a FLOPs-budgeted search needs torch alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.atomic import write_text_atomic
from pipeline.errors import ConfigError
from pipeline.hardware import processor_name
from pipeline.pruning.budget import round_width
from pipeline.pruning.groups import ChannelLayout

Widths = dict[str, int]
GRID_POINTS = 9  # measured widths per group (interpolated between)
CALIBRATION_ROUNDS = 3


@dataclass(frozen=True)
class Runtime:
    """Where the model will run: ONNX Runtime with this provider, threads and batch."""

    provider: str = "CPUExecutionProvider"
    threads: int | None = None
    batch: int = 64
    warmup: int = 3
    repeats: int = 15

    def session(self, model_bytes: bytes):
        import onnxruntime as ort

        from pipeline.evaluate import session_options

        options = session_options(self.threads)
        return ort.InferenceSession(model_bytes, options, providers=[self.provider])

    def time_ms(self, session, x: np.ndarray) -> float:
        """The fastest of ``repeats`` runs: on a shared machine the other runs measure
        the neighbours (pre-emption), the fastest the model."""
        from pipeline.evaluate import flushed_denormals

        feed = {session.get_inputs()[0].name: x}
        times = []
        with flushed_denormals():
            for _ in range(self.warmup):
                session.run(None, feed)
            for _ in range(self.repeats):
                start = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - start) * 1e3)
        return min(times)


def cache_key(runtime: Runtime) -> str:
    """Content address of the timings: what they depend on, hashed."""
    import onnxruntime as ort

    device = (
        torch.cuda.get_device_name()
        if runtime.provider == "CUDAExecutionProvider"
        else processor_name()
    )
    text = json.dumps(
        {
            "onnxruntime": ort.__version__,
            "provider": runtime.provider,
            "device": device,
            "threads": runtime.threads,
            "batch": runtime.batch,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LayerShape:
    """One conv or linear layer with its group wiring and its fixed geometry."""

    module: str
    in_group: str | None
    out_group: str | None
    in_fixed: int
    out_fixed: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    depthwise: bool = False
    in_hw: tuple[int, int] | None = None  # None: a linear layer

    def signature(self, cin: int, cout: int) -> str:
        geometry = (
            "linear"
            if self.in_hw is None
            else (
                f"conv{self.kernel}s{self.stride}p{self.padding}hw{self.in_hw}dw{int(self.depthwise)}"
            )
        )
        return f"{geometry}:{cin}x{cout}"


def layer_shapes(dense: nn.Module, layout: ChannelLayout, input_shape) -> list[LayerShape]:
    inputs: dict[str, tuple[int, ...]] = {}
    modules = dict(dense.named_modules())
    handles = [
        modules[w.module].register_forward_hook(
            lambda _m, inp, _out, name=w.module: inputs.__setitem__(name, tuple(inp[0].shape))
        )
        for w in layout.layers
        if w.kind != "bn"
    ]
    with torch.no_grad():
        was_training = dense.training
        dense.eval()
        dense(torch.zeros(1, *input_shape))
        dense.train(was_training)
    for h in handles:
        h.remove()
    shapes = []
    for w in layout.layers:
        if w.kind == "bn":
            continue
        m = modules[w.module]
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            shapes.append(
                LayerShape(
                    w.module,
                    w.in_group,
                    w.out_group,
                    m.in_channels,
                    m.out_channels,
                    tuple(m.kernel_size),
                    tuple(m.stride),
                    tuple(m.padding),
                    depthwise,
                    tuple(inputs[w.module][2:]),
                )
            )
        else:
            shapes.append(
                LayerShape(w.module, w.in_group, w.out_group, m.in_features, m.out_features)
            )
    return shapes


def layer_graph(shape: LayerShape, cin: int, cout: int, batch: int) -> tuple[bytes, np.ndarray]:
    """The layer alone as an ONNX graph (conv + ReLU, or Gemm) and an input for it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if shape.in_hw is None:
        x = rng.standard_normal((batch, cin), dtype=np.float32)
        weight = rng.standard_normal((cout, cin), dtype=np.float32) * 0.05
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
        out_shape = [batch, cout]
    else:
        groups = cin if shape.depthwise else 1
        x = rng.standard_normal((batch, cin, *shape.in_hw), dtype=np.float32)
        weight = rng.standard_normal((cout, cin // groups, *shape.kernel), dtype=np.float32)
        weight *= 0.05
        pads = [shape.padding[0], shape.padding[1]] * 2
        nodes = [
            helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["c"],
                kernel_shape=list(shape.kernel),
                strides=list(shape.stride),
                pads=pads,
                group=groups,
            ),
            helper.make_node("Relu", ["c"], ["y"]),
        ]
        out_shape = [batch, cout, None, None]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.zeros(cout, dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return model.SerializeToString(), x


def width_grid(dense: int, choices: Sequence[int]) -> list[int]:
    """At most GRID_POINTS of the widths the search can choose, evenly spread, ends kept."""
    choices = sorted(set(choices))
    if len(choices) <= GRID_POINTS:
        return choices
    picks = np.linspace(0, len(choices) - 1, GRID_POINTS).round().astype(int)
    return sorted({choices[i] for i in picks})


def _interpolate(grid: list[int], value: int) -> list[tuple[int, float]]:
    """Grid neighbours of ``value`` and their linear weights."""
    if value <= grid[0]:
        return [(grid[0], 1.0)]
    if value >= grid[-1]:
        return [(grid[-1], 1.0)]
    hi = next(i for i, g in enumerate(grid) if g >= value)
    a, b = grid[hi - 1], grid[hi]
    if b == value:
        return [(b, 1.0)]
    t = (value - a) / (b - a)
    return [(a, 1 - t), (b, t)]


def check_latency_modelled(layout: ChannelLayout) -> None:
    """Refuse a layout whose structures the per-layer latency table does not model yet:
    its predictions would be wrong, and a latency budget met on them would not be."""
    missing = []
    if any(w.in_segments or w.out_segments for w in layout.layers):
        missing.append("concatenations")
    if any(w.conv_groups > 1 for w in layout.layers) or any(
        g.tiles > 1 for g in layout.groups.values()
    ):
        missing.append("grouped convolutions")
    if any(w.in_block > 1 for w in layout.layers):
        missing.append("feature maps flattened into a linear layer")
    if missing:
        raise ConfigError(
            f"search.target_latency: the latency model does not cover {', '.join(missing)} "
            f"yet, which this model has; set search.target_latency: null and use "
            f"search.target_flops for it."
        )


class LatencyModel:
    """Predicted latency (ms) of the network at any widths, on one runtime; the same
    interface as ``FlopsModel`` (``dense_widths``, ``ratio``), so the budget projection
    of every method takes either."""

    name = "latency"

    def __init__(
        self,
        dense: nn.Module,
        layout: ChannelLayout,
        input_shape,
        choices: dict[str, Sequence[int]],
        runtime: Runtime,
        cache_dir: Path,
        measure_network: Callable[[Widths], float],
        progress: Callable[[int, int], None] = lambda done, total: None,
    ):
        check_latency_modelled(layout)
        self.runtime = runtime
        self.dense_widths = layout.dense_widths()
        self.shapes = layer_shapes(dense, layout, input_shape)
        self.grids = {g: width_grid(w, choices.get(g, [w])) for g, w in self.dense_widths.items()}
        self.cache_path = Path(cache_dir) / f"latency-{cache_key(runtime)}.json"
        self.table = self._measure_layers(progress)
        self.calibration = self._calibrate(measure_network)
        self.dense_ms = self.dense_cost = self(self.dense_widths)

    # --------------------------------------------------------------- prediction
    def layer_sum(self, widths: Widths) -> float:
        total = 0.0
        for s in self.shapes:
            ins = self._axis(s.in_group, s.in_fixed, widths)
            outs = self._axis(s.out_group, s.out_fixed, widths)
            for cin, wi in ins:
                for cout, wo in outs:
                    cout = cin if s.depthwise else cout
                    total += wi * wo * self.table[s.signature(cin, cout)]
        return total

    def __call__(self, widths: Widths) -> float:
        a, b = self.calibration
        return a * self.layer_sum(widths) + b

    def ratio(self, widths: Widths) -> float:
        return self(widths) / self.dense_ms

    def _axis(self, group: str | None, fixed: int, widths: Widths) -> list[tuple[int, float]]:
        return [(fixed, 1.0)] if group is None else _interpolate(self.grids[group], widths[group])

    # -------------------------------------------------------------- measurement
    def _points(self) -> dict[str, tuple[LayerShape, int, int]]:
        points = {}
        for s in self.shapes:
            ins = [s.in_fixed] if s.in_group is None else self.grids[s.in_group]
            outs = [s.out_fixed] if s.out_group is None else self.grids[s.out_group]
            for cin in ins:
                for cout in [cin] if s.depthwise else outs:
                    points.setdefault(s.signature(cin, cout), (s, cin, cout))
        return points

    def _measure_layers(self, progress) -> dict[str, float]:
        cached = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        table = dict(cached.get("layers", {}))
        missing = {k: p for k, p in self._points().items() if k not in table}
        for done, (key, (shape, cin, cout)) in enumerate(missing.items(), 1):
            graph, x = layer_graph(shape, cin, cout, self.runtime.batch)
            table[key] = self.runtime.time_ms(self.runtime.session(graph), x)
            progress(done, len(missing))
        if missing:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            record = {"runtime": self.runtime.__dict__, "layers": table}
            write_text_atomic(self.cache_path, json.dumps(record, indent=1, sort_keys=True))
        return table

    def _calibrate(self, measure_network: Callable[[Widths], float]) -> tuple[float, float]:
        """a, b with measured = a * layer_sum + b on the dense network and a thin one,
        each the fastest of CALIBRATION_ROUNDS alternating measurements. A fit that a
        noisy machine bends (a <= 0, b < 0) falls back to a proportional one (b = 0)."""
        thin = {g: grid[len(grid) // 3] for g, grid in self.grids.items()}
        x = [self.layer_sum(self.dense_widths), self.layer_sum(thin)]
        y = [math.inf, math.inf]
        for _ in range(CALIBRATION_ROUNDS):
            y = [min(y[0], measure_network(self.dense_widths)), min(y[1], measure_network(thin))]
        if not math.isclose(x[0], x[1]):
            a = (y[0] - y[1]) / (x[0] - x[1])
            b = y[0] - a * x[0]
            if a > 0 and b >= 0:
                return a, b
        return y[0] / x[0], 0.0


class NetworkTimer:
    """Measured latency of the whole network at given widths: built, exported to ONNX
    once per width assignment, then timed on the runtime at each call."""

    def __init__(self, spec, runtime: Runtime):
        self.spec, self.runtime = spec, runtime
        self._sessions: dict[tuple, object] = {}
        shape = (runtime.batch, *spec.input_shape)
        self._input = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def __call__(self, widths: Widths) -> float:
        key = tuple(sorted(widths.items()))
        if key not in self._sessions:
            self._sessions[key] = self._session(widths)
        return self.runtime.time_ms(self._sessions[key], self._input)

    def _session(self, widths: Widths):
        from pipeline.export import export_onnx
        from pipeline.pruning.slicing import build_model

        model = build_model(replace(self.spec, widths=dict(widths))).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "network.onnx"
            samples = torch.zeros(2, *self.spec.input_shape)
            shape = tuple(self.spec.input_shape)
            # Random weights: timing only, so the outputs are not compared.
            export_onnx(model, shape, path, sample_inputs=samples, tolerance=math.inf)
            return self.runtime.session(path.read_bytes())


def width_choices(
    dense_widths: Widths, groups: Sequence[str], k_min: int, round_to: int
) -> dict[str, list[int]]:
    """Widths a search may give each group: multiples of ``round_to`` from the k_min
    floor up, and the dense width; groups it may not prune stay dense."""
    choices = {}
    for g, dense in dense_widths.items():
        if g not in groups:
            choices[g] = [dense]
            continue
        floor = round_width(0, dense, k_min, round_to)
        choices[g] = sorted({floor, dense, *range(floor, dense + 1, round_to)})
    return choices
