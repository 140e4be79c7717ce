"""int8 deployment: ONNX Runtime static quantization of an exported fp32 model.

QDQ format, per-channel int8 weights and uint8 activations (ONNX Runtime's fast path on
x86 CPUs with VNNI/AMX), activation ranges calibrated on training images. The model is
pre-processed first (shape inference, Conv+BatchNormalization fusion), so BN never sits
between a quantized conv and its output. The quantized file keeps the fp32 file's
metadata (architecture hash and spec, classes, normalization) and adds
``quantization: int8``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pipeline.errors import PipelineError

QUANTIZATION_KEY = "quantization"


class AccuracyLoss(PipelineError):
    """The int8 model lost more accuracy than the stated tolerance."""


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: np.ndarray,
    *,
    batch_size: int = 32,
) -> Path:
    """Write the int8 (QDQ) version of ``fp32_path`` to ``out_path``, atomically.

    ``calibration_images`` are inputs as the fp32 graph takes them (uint8 N x H x W x C
    images or normalized float32 N x C x H x W tensors, see ``pipeline.export``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = onnx.load(str(fp32_path))
    graph_input = fp32.graph.input[0]
    input_name = graph_input.name
    # What the graph takes: uint8 images or normalized float32 tensors (pipeline.export).
    dtype = onnx.helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
    batches = [
        np.ascontiguousarray(calibration_images[i : i + batch_size], dtype=dtype)
        for i in range(0, len(calibration_images), batch_size)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        model = onnx.load(str(quantized))
        metadata = {p.key: p.value for p in fp32.metadata_props} | {QUANTIZATION_KEY: "int8"}
        onnx.helper.set_model_props(model, metadata)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staged = out_path.with_name(f".{out_path.name}.tmp")
        onnx.save_model(model, str(staged))
        os.replace(staged, out_path)
    return out_path


def check_accuracy_kept(fp32_top1: float, int8_top1: float, max_drop: float) -> None:
    """Raise ``AccuracyLoss`` when int8 top-1 is more than ``max_drop`` below fp32's."""
    drop = fp32_top1 - int8_top1
    if drop > max_drop:
        raise AccuracyLoss(
            f"the int8 model's validation top-1 is {100 * int8_top1:.2f} %, "
            f"{100 * drop:.2f} points below the fp32 model's {100 * fp32_top1:.2f} % "
            f"(export.int8_max_drop allows {100 * max_drop:.2f}); it was not written. Keep "
            "export.quantize: none, calibrate on more images (export.calibration_images) or "
            "raise export.int8_max_drop."
        )
