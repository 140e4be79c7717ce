"""Stage 4, export: the fine-tuned compact model (and the dense reference) to ONNX."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from pipeline.artifacts import load_compact
from pipeline.data import load_prepared
from pipeline.evaluate import open_session, split_top_k
from pipeline.export import export_arguments, export_onnx, graph_inputs
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.quantize import check_accuracy_kept, quantize_int8
from stages.common import (
    COMPACT_DIR,
    DENSE_ONNX,
    ONNX_MODEL,
    PREPARED_DIR,
    display_path,
    done,
    run_stage,
    start,
    tracked_stage,
    write_metrics,
)

PARITY_IMAGES = 64
# In metrics/export.json (the rest in metrics/details/export.json): the shipped file's size,
# its largest difference from PyTorch and, for int8, the validation top-1 it kept.
COMPARED = ("model_kb", "max_abs_diff", "val_top1_int8")


def main() -> None:
    cfg = start("export")
    with tracked_stage(cfg, "export", [PREPARED_DIR, COMPACT_DIR]) as run:
        data = load_prepared(PREPARED_DIR)
        spec, model = load_compact(COMPACT_DIR)
        # The dense reference takes the same input as model.onnx: comparable latencies.
        inputs = export_arguments(
            data.test.head(PARITY_IMAGES), cfg.export.input, data.mean, data.std
        )
        metadata = {
            "arch_sha256": spec.sha256,
            "arch_spec": spec.canonical_json(),
            "classes": json.dumps(data.classes),
            "mean": json.dumps(data.mean),
            "std": json.dumps(data.std),
        }
        with tempfile.TemporaryDirectory(dir=ONNX_MODEL.parent) as tmp:
            fp32_path = Path(tmp) / "model_fp32.onnx"
            report = export_onnx(
                model,
                spec.input_shape,
                fp32_path,
                opset=cfg.export.opset,
                metadata=metadata,
                tolerance=cfg.export.tolerance,
                **inputs,
            )
            quantized = {}
            if cfg.export.quantize == "int8":
                quantized = quantize_checked(cfg, data, fp32_path, Path(tmp) / "model_int8.onnx")
                os.replace(Path(tmp) / "model_int8.onnx", ONNX_MODEL)
            else:
                os.replace(fp32_path, ONNX_MODEL)
        # The dense architecture is exported only as the latency reference; seeded, so that
        # its (untrained) weights, and the file, are the same in every run.
        dense = dense_spec(spec.model, spec.input_shape, spec.num_classes)
        torch.manual_seed(cfg.seed)
        dense_report = export_onnx(
            build_model(dense),
            dense.input_shape,
            DENSE_ONNX,
            opset=cfg.export.opset,
            metadata={"arch_sha256": dense.sha256},
            tolerance=cfg.export.tolerance,
            **inputs,
        )
        record = {
            "max_abs_diff": report.max_abs_diff,
            "dense_max_abs_diff": dense_report.max_abs_diff,
            "logit_scale": report.logit_scale,
            "parity_images": report.num_checked,
            "opset": cfg.export.opset,
            "input_format": report.input_format,
            "arch_sha256": spec.sha256,
            "quantize": cfg.export.quantize,
            "model_kb": round(ONNX_MODEL.stat().st_size / 1024, 1),
            **quantized,
        }
        write_metrics("export", record, COMPARED)
        run.log_metrics({"max_abs_diff": report.max_abs_diff, **quantized})
        done("export", export_summary(cfg, record))
        run.set_tags({"export.quantize": cfg.export.quantize, "export.input": report.input_format})
        run.log_artifact(ONNX_MODEL, "onnx")


def export_summary(cfg, record: dict) -> str:
    """``models/model.onnx 391.2 kB (fp32, uint8 image input); matches PyTorch on 64 test
    images (largest |difference| 5.7e-06, tolerance 1e-04 x 14.5)``"""
    numbers = "int8" if record["quantize"] == "int8" else "fp32"
    text = (
        f"{display_path(ONNX_MODEL)} {record['model_kb']:.1f} kB ({numbers}, "
        f"{'uint8 image' if record['input_format'] == 'image' else 'float32 tensor'} input); "
        f"{'its fp32 export ' if numbers == 'int8' else ''}matches PyTorch on "
        f"{record['parity_images']} test images (largest |difference| "
        f"{record['max_abs_diff']:.2g}, tolerance {cfg.export.tolerance:g} x "
        f"{max(1.0, record['logit_scale']):.3g})"
    )
    if "val_top1_int8" in record:
        text += (
            f"; int8 val top-1 {100 * record['val_top1_int8']:.2f} % "
            f"(fp32 {100 * record['val_top1_fp32']:.2f} %)"
        )
    return text


def quantize_checked(cfg, data, fp32_path: Path, int8_path: Path) -> dict:
    """Quantize, calibrating on training images, and refuse an int8 model whose
    validation top-1 falls more than export.int8_max_drop below the fp32 model's."""
    fmt = cfg.export.input
    calibration = graph_inputs(
        data.train.head(cfg.export.calibration_images), fmt, data.mean, data.std
    )
    quantize_int8(fp32_path, int8_path, calibration)

    def to_inputs(images):
        return graph_inputs(images, fmt, data.mean, data.std)

    top1 = {
        name: split_top_k(open_session(path, "cpu")[0], data.val.batches(256), to_inputs)["top1"]
        for name, path in (("fp32", fp32_path), ("int8", int8_path))
    }
    check_accuracy_kept(top1["fp32"], top1["int8"], cfg.export.int8_max_drop)
    return {"val_top1_fp32": top1["fp32"], "val_top1_int8": top1["int8"]}


if __name__ == "__main__":
    run_stage(main)
