"""What the tests of pipeline.tracking share: a tracker on the test store, unique keys, and a
tiny ONNX model to register."""

from __future__ import annotations

import uuid
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from pipeline.tracking import PipelineTracker

EXPERIMENT = "jst-tests"
PARAMS = {
    "data": {"dataset": "cifar10", "image_size": 32},
    "search": {"target_flops": 0.5, "widths": [16, 32]},
}


def new_tracker(uri: str, key: str, run_name: str = "pipeline") -> PipelineTracker:
    return PipelineTracker(uri, EXPERIMENT, key, PARAMS, run_name)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tiny_onnx_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weights]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
